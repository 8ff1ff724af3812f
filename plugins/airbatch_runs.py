"""The run view inside the Airflow UI, and the DAG run's note.

- A FastAPI app mounted at /airbatch in the api-server: the run view of a unit pipeline's run
  (operators.kit.runview), its dead-letter units as CSV, its report, its files and its Batch jobs (a page
  per job: status, attempts, log tail, through the connection's endpoint; the Batch links of a task point
  there when that endpoint is not AWS's).
  Every route requires Airflow's own login and the right to read the DAG's runs
  (`requires_access_dag("GET", RUN)`, as the core API's routes do): a mounted app gets neither by itself.
- External views: "Run view" on the DAG-run page, and on each task instance (a shard's shows that shard).
- A listener: when a run ends, its note says "N batches: done, cached, failed, dead-lettered".
"""
# No `from __future__ import annotations`: FastAPI reads the routes' annotations, defined inside create_app.
import asyncio
import json
import logging

from airflow.listeners import hookimpl
from airflow.plugins_manager import AirflowPlugin

from operators.kit.runview import URL_PREFIX

log = logging.getLogger(__name__)


def create_app():
    from fastapi import Depends, FastAPI, HTTPException
    from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response

    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
    from airflow.api_fastapi.common.db.common import SessionDep
    from airflow.api_fastapi.core_api.security import requires_access_dag
    from operators.kit import engine, runview

    can_read_run = [Depends(requires_access_dag("GET", DagAccessEntity.RUN))]
    app = FastAPI(title="airbatch run view", docs_url=None, redoc_url=None, openapi_url=None)

    @app.middleware("http")
    async def no_sniffing(request, call_next):
        # Every answer, files and errors included: a browser must take each as the type it is sent as
        # (a run's file could hold HTML or script that sniffing would run in the Airflow UI's origin).
        response = await call_next(request)
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response

    @app.exception_handler(runview.UnsafePath)
    def unsafe_path(request, error: runview.UnsafePath):
        # A link (or a FIFO) a job may have planted below DATA_ROOT: as if the file were not there.
        return JSONResponse({"detail": f"not served: {error}"}, status_code=404)

    @app.exception_handler(runview.OutsideRunFolders)
    def outside(request, error: runview.OutsideRunFolders):
        return JSONResponse({"detail": f"{error}: the run view serves only files of the run's own folders"},
                            status_code=403)
    # The report and the pages embed only inline styles and data: images; nothing may load or run anything else.
    page_policy = {"Content-Security-Policy": "default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
                                              "frame-src 'self'; frame-ancestors 'self'",
                   "X-Content-Type-Options": "nosniff"}

    def run_states(session, dag_id: str, run_id: str) -> dict[int, str]:
        from sqlalchemy import select

        from airflow.models.dagrun import DagRun
        from airflow.models.taskinstance import TaskInstance

        if session.scalar(select(DagRun.id).where(DagRun.dag_id == dag_id, DagRun.run_id == run_id)) is None:
            raise HTTPException(404, f"DAG {dag_id!r} has no run {run_id!r}")
        rows = session.execute(select(TaskInstance.map_index, TaskInstance.state).where(
            TaskInstance.dag_id == dag_id, TaskInstance.run_id == run_id,
            TaskInstance.task_id == runview.SHARD_TASK)).all()
        return {m: str(getattr(s, "value", s)) for m, s in rows if m is not None and m >= 0}

    def aws_place() -> tuple[str | None, bool]:
        from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook

        hook = AwsBaseHook(aws_conn_id="aws_default", client_type="batch")
        return hook.conn_region_name, bool(hook.conn_config.get_service_endpoint_url("batch"))

    def load(session, dag_id: str, run_id: str):
        states = run_states(session, dag_id, run_id)
        files = runview.RunFiles(engine.run_root_of(dag_id, run_id))
        region, local = aws_place()
        data = runview.run_data(session, dag_id, run_id, files=files, region=region, local=local, shard_states=states)
        data["alarms"] = runview.run_alarms(files)  # the run's published metrics, its alarms' states now
        return data, files

    @app.get("/runs/{dag_id}/{run_id}", dependencies=can_read_run, response_class=HTMLResponse)
    def run_view(dag_id: str, run_id: str, session: SessionDep, shard: int | None = None, page: int = 1):
        data, files = load(session, dag_id, run_id)
        shown = shard if shard is not None and shard >= 0 else None  # an unmapped task's map index is -1
        return HTMLResponse(runview.render_page(data, runview.dead_letter_page(files, page), shown),
                            headers=page_policy)

    @app.get("/runs/{dag_id}/{run_id}/data.json", dependencies=can_read_run)
    def run_view_data(dag_id: str, run_id: str, session: SessionDep):
        return JSONResponse(json.loads(json.dumps(load(session, dag_id, run_id)[0], default=str)))

    @app.get("/runs/{dag_id}/{run_id}/dead_letter.json", dependencies=can_read_run)
    def dead_letter(dag_id: str, run_id: str, session: SessionDep, page: int = 1):
        run_states(session, dag_id, run_id)
        return runview.dead_letter_page(runview.RunFiles(engine.run_root_of(dag_id, run_id)), page)

    @app.get("/runs/{dag_id}/{run_id}/dead_letter.csv", dependencies=can_read_run)
    def dead_letter_csv(dag_id: str, run_id: str, session: SessionDep):
        run_states(session, dag_id, run_id)
        text = runview.dead_letter_csv(runview.RunFiles(engine.run_root_of(dag_id, run_id)))
        name = engine.safe_name(f"{dag_id}-{run_id}-dead_letter")
        return PlainTextResponse(text, media_type="text/csv",
                                 headers={"Content-Disposition": f'attachment; filename="{name}.csv"',
                                          "X-Content-Type-Options": "nosniff"})

    @app.get("/runs/{dag_id}/{run_id}/report", dependencies=can_read_run)
    def report(dag_id: str, run_id: str, session: SessionDep):
        data, files = load(session, dag_id, run_id)
        if not files.version_dir:
            raise HTTPException(404, f"run {run_id!r} of {dag_id!r} registered no version, so it has no report")
        return HTMLResponse(files.read("report.html", files.version_dir), headers=page_policy)

    @app.get("/runs/{dag_id}/{run_id}/files/{path:path}", dependencies=can_read_run)
    def run_file(dag_id: str, run_id: str, path: str, session: SessionDep):
        run_states(session, dag_id, run_id)
        files = runview.RunFiles(engine.run_root_of(dag_id, run_id))
        try:
            data = files.read(path)
        except runview.UnsafePath as error:
            raise HTTPException(404, f"the run's folder has no file {path!r} that the run view serves: {error}") from None
        except runview.OutsideRunFolders as error:
            raise HTTPException(403, f"{error}: the run view serves only files of the run's own folder") from None
        except (FileNotFoundError, IsADirectoryError):
            raise HTTPException(404, f"the run's folder has no file {path!r}") from None
        if path.endswith(".md"):
            # A sweep's report.md opens in the browser as the text it is: text/plain, never rendered or sniffed.
            return Response(data, media_type="text/plain; charset=utf-8",
                            headers={**page_policy, "Content-Disposition": "inline"})
        kind = "application/json" if path.endswith(".json") else "application/octet-stream"
        return Response(data, media_type=kind, headers={"X-Content-Type-Options": "nosniff",
                                                        "Content-Disposition": "attachment"})

    def run_job(session, dag_id: str, run_id: str, job_id: str) -> dict:
        """DescribeJobs of `job_id`, only when it (or its array parent) is one of the run's jobs; and the hook."""
        from operators.kit.batch_hook import HouseBatchHook

        run_states(session, dag_id, run_id)
        if job_id.split(":")[0] not in runview.run_job_ids(session, dag_id, run_id):
            raise HTTPException(404, f"job {job_id!r} is not one of run {run_id!r}'s Batch jobs")
        hook = HouseBatchHook(aws_conn_id="aws_default")
        job = hook.describe_job(job_id)
        if job is None:
            raise HTTPException(404, f"AWS Batch no longer knows job {job_id!r}")
        return job, hook

    @app.get("/runs/{dag_id}/{run_id}/jobs/{job_id}/data.json", dependencies=can_read_run)
    def job_data(dag_id: str, run_id: str, job_id: str, session: SessionDep):
        return JSONResponse(json.loads(json.dumps(run_job(session, dag_id, run_id, job_id)[0], default=str)))

    @app.get("/runs/{dag_id}/{run_id}/jobs/{job_id}", dependencies=can_read_run, response_class=HTMLResponse)
    def job_page(dag_id: str, run_id: str, job_id: str, session: SessionDep):
        # Where the task's Batch links point on an endpoint other than AWS's (the local one): the job's status,
        # attempts and log tail through that endpoint, read-only.
        job, hook = run_job(session, dag_id, run_id, job_id)
        stream = runview.log_stream_of(job)
        lines = hook.log_tail(stream, runview.JOB_LOG_LINES) if stream else None
        failed = []
        if (job.get("arrayProperties") or {}).get("size"):
            failed = hook.failed_children(job["jobId"], more_than=runview.JOB_CHILDREN_SHOWN)
        return HTMLResponse(runview.render_job_page(dag_id, run_id, job, lines, failed), headers=page_policy)

    return app


class AppOnFirstRequest:
    """An ASGI app that builds the real one (`factory()`) when its first request comes.

    Every Airflow process loads the plugins, each task's process included (for their listeners), and
    building the run view imports the api-server's security layer and the engine: about a second of
    every task that only the api-server ever uses.
    """

    def __init__(self, factory):
        self.factory = factory
        self.app = None
        self._building = asyncio.Lock()

    async def __call__(self, scope, receive, send):
        if self.app is None:
            async with self._building:
                if self.app is None:
                    self.app = await asyncio.to_thread(self.factory)
        await self.app(scope, receive, send)


class RunNoteListener:
    """Sets a finished run's note from its collect step (or its shards) in the scheduler's own session."""

    @hookimpl
    def on_dag_run_success(self, dag_run, msg: str):
        self.note(dag_run)

    @hookimpl
    def on_dag_run_failed(self, dag_run, msg: str):
        self.note(dag_run)

    @staticmethod
    def note(dag_run) -> None:
        from sqlalchemy.orm import object_session

        from operators.kit.runview import set_run_note

        try:
            session = object_session(dag_run)
            if session is not None:
                set_run_note(dag_run, session)
            else:
                from airflow.models.dagrun import DagRun
                from airflow.utils.session import create_session

                with create_session() as own:
                    attached = own.get(DagRun, dag_run.id)
                    if attached is not None:
                        set_run_note(attached, own)
        except Exception:  # noqa: BLE001 - a note must never change a run's outcome
            log.exception("could not set the note of run %s of %s", dag_run.run_id, dag_run.dag_id)


class AirbatchRunsPlugin(AirflowPlugin):
    name = "airbatch_runs"
    fastapi_apps = [{"name": "airbatch run view", "app": AppOnFirstRequest(create_app), "url_prefix": URL_PREFIX}]
    external_views = [
        {"name": "Run view", "href": f"{URL_PREFIX}/runs/{{DAG_ID}}/{{RUN_ID}}", "destination": "dag_run",
         "url_route": "airbatch-run-view"},
        {"name": "Shard view", "href": f"{URL_PREFIX}/runs/{{DAG_ID}}/{{RUN_ID}}?shard={{MAP_INDEX}}",
         "destination": "task_instance", "url_route": "airbatch-shard-view"},
    ]
    listeners = [RunNoteListener()]
