"""What a unit pipeline's run did, read from its files: the run view's data, its pages and the run note.

The run view (plugins/airbatch_runs.py serves it inside the Airflow UI) shows for one DAG run:
batches by state per shard with failure classes and first errors, the dead-letter units, the
registry version with its decision and report, links to each Batch job, the lineage and the cost.
Everything comes from the run's own folders:

    DATA_ROOT/runs/<dag_id>/<run_id>/                      results/shard-N.json, dead_letter.parquet, cost.json
    DATA_ROOT/registry/<model>/versions/<version>/          version.json, report.html (the run's version only)

and from the run's XComs (shard summaries with job ids, the evaluation's version). `RunFiles.read`
refuses any path that is not inside those folders. On a local DATA_ROOT every file is opened one
path component at a time from the real DATA_ROOT, each relative to its parent's descriptor and
without following a symbolic link (`open_beneath`): a link anywhere between DATA_ROOT and the file
(a run folder a job replaced by a link to /etc, a linked DAG or registry folder, a linked file) is
refused, including one planted between a check and the open.
"""
from __future__ import annotations

import errno
import html
import io
import json
import os
import posixpath
import re
import stat
from dataclasses import dataclass, field
from typing import Any, Callable
from urllib.parse import quote

#: Where the plugin's FastAPI app is mounted in the api-server.
URL_PREFIX = "/airbatch"
SHARD_TASK = "run_shard"
PLAN_TASK = "plan"
COLLECT_TASKS = ("collect", "summary")
EVALUATE_TASK = "evaluate"
DEAD_LETTER_FILE = "dead_letter.parquet"
#: The XCom key under which a stage that skips the rest of its run keeps why (skip_rest_of_run).
SKIP_KEY = "skipped"
#: The stages that may skip the rest of their run (the first ones, before any Batch job).
SKIPPING_TASKS = ("dataset", "prepare", "plan")
PAGE_SIZE = 50


def run_view_path(dag_id: str, run_id: str) -> str:
    """The run view's address in the Airflow UI's server (relative to its root)."""
    return f"{URL_PREFIX}/runs/{quote(dag_id, safe='')}/{quote(run_id, safe='')}"


# --- the note --------------------------------------------------------------------------------------

def batch_counts(completed: list[dict[str, Any]], failed: list[dict[str, Any]]) -> dict[str, int]:
    """Batches by state from shard summaries: `completed` shards (their failed batches were dead-lettered: the
    run went on without them) and `failed` shards (their failed batches failed the shard)."""
    counts = {"batches": 0, "done": 0, "cached": 0, "failed": 0, "dead_lettered": 0, "units_dead_lettered": 0}
    for summary in completed:
        counts["dead_lettered"] += summary.get("failed", 0)
        counts["units_dead_lettered"] += summary.get("units_failed", 0)
    for summary in failed:
        counts["failed"] += summary.get("failed", 0)
    for summary in [*completed, *failed]:
        counts["batches"] += summary.get("batches", 0)
        counts["done"] += summary.get("succeeded", 0)
        counts["cached"] += summary.get("cached", 0)
    return counts


def note_text(counts: dict[str, int], cost: dict[str, Any] | None = None) -> str:
    """"N batches: D done, C cached, F failed, L dead-lettered (U units)" and the cost, for the DAG run's note."""
    text = (f"{counts['batches']:,} batch{'' if counts['batches'] == 1 else 'es'}: {counts['done']:,} done, "
            f"{counts['cached']:,} cached, {counts['failed']:,} failed, {counts['dead_lettered']:,} dead-lettered")
    if counts.get("units_dead_lettered"):
        units = counts["units_dead_lettered"]
        text += f" ({units:,} unit{'' if units == 1 else 's'})"
    if counts.get("not_finished"):
        text += f", {counts['not_finished']:,} not finished (their shard has no result)"
    if cost:
        from operators.kit.cost import money

        text += f"; cost {money(cost.get('cost'), cost.get('currency', 'USD'))} (estimate)"
    return text


def run_note(fanout: dict[str, Any]) -> str:
    """The note of a run whose collect step ran: every failed batch was dead-lettered."""
    counts = {"batches": fanout["batches"], "done": fanout["succeeded"], "cached": fanout["cached"], "failed": 0,
              "dead_lettered": fanout["failed"], "units_dead_lettered": fanout.get("units_failed", 0)}
    return note_text(counts, fanout.get("cost"))


# --- a run's records in the metadata DB ---------------------------------------------------------------

def xcoms(session, dag_id: str, run_id: str, task_ids: tuple[str, ...], key: str = "return_value") -> list[tuple]:
    """(task_id, map_index, value) of a run's XComs, decoded."""
    from sqlalchemy import select

    from airflow.models.xcom import XComModel

    rows = session.execute(select(XComModel.task_id, XComModel.map_index, XComModel.value).where(
        XComModel.dag_id == dag_id, XComModel.run_id == run_id, XComModel.task_id.in_(task_ids),
        XComModel.key == key)).all()
    return [(task_id, map_index, json.loads(value) if isinstance(value, (str, bytes)) else value)
            for task_id, map_index, value in rows]


def shard_summaries(session, dag_id: str, run_id: str) -> tuple[dict[int, dict], dict[int, dict]]:
    """({map_index: summary} of shards that completed, {map_index: summary} of shards that failed)."""
    completed = {m: v for _, m, v in xcoms(session, dag_id, run_id, (SHARD_TASK,)) if isinstance(v, dict)}
    failed = {m: v for _, m, v in xcoms(session, dag_id, run_id, (SHARD_TASK,), key="summary")
              if isinstance(v, dict) and m not in completed}
    return completed, failed


def skip_rest_of_run(dag_id: str, run_id: str, task_id: str, reason: str):
    """Skip the rest of the run from the running stage `task_id`, saying why three times: a `skipped`
    notification, the reason kept in the task's XCom `SKIP_KEY` (the run's note and the run view show it) and
    the skip's own message in the task log. Airflow's `on_skipped_callback` gets no exception, so it could not
    say why. Raises AirflowSkipException: every task after it is skipped and the run succeeds."""
    from airflow.sdk import get_current_context
    from airflow.sdk.exceptions import AirflowSkipException

    from operators.kit import notify

    if task_id not in SKIPPING_TASKS:
        raise ValueError(f"{task_id!r} cannot skip the rest of its run: only {SKIPPING_TASKS} can (the run note "
                         "reads the reason from them)")
    get_current_context()["ti"].xcom_push(key=SKIP_KEY, value={"task_id": task_id, "reason": reason})
    notify.notify_skip(dag_id, run_id, task_id, reason)
    raise AirflowSkipException(reason)


def skip_reason(session, dag_id: str, run_id: str) -> dict[str, str] | None:
    """{"task_id", "reason"} of the stage that skipped the rest of the run (skip_rest_of_run), else None."""
    for _, _, value in xcoms(session, dag_id, run_id, SKIPPING_TASKS, key=SKIP_KEY):
        if isinstance(value, dict) and value.get("reason"):
            return value
    return None


def skip_note(skipped: dict[str, str]) -> str:
    return f"skipped at {skipped.get('task_id', '?')}: {skipped['reason']}"


def note_for_run(session, dag_id: str, run_id: str) -> str | None:
    """The note a finished run gets: why it skipped itself when a stage did, else from its collect step when it
    ran, else from its shards; None when the run has no shard."""
    skipped = skip_reason(session, dag_id, run_id)
    if skipped:
        return skip_note(skipped)
    for _, _, value in xcoms(session, dag_id, run_id, COLLECT_TASKS):
        if isinstance(value, dict) and value.get("note"):
            return value["note"]
    completed, failed = shard_summaries(session, dag_id, run_id)
    planned = planned_batches(session, dag_id, run_id)
    if not completed and not failed and not planned:
        return None
    counts = batch_counts(list(completed.values()), list(failed.values()))
    # A shard with no summary (its task was killed, or never ran) still holds its batches: a note that left
    # them out would report a part of the run as the whole of it.
    counts["not_finished"] = sum(size for index, size in planned.items() if index not in completed and index not in failed)
    counts["batches"] += counts["not_finished"]
    return note_text(counts)


#: The XCom key where the provider's BatchOperator keeps each submitted job's id (BatchJobDetailsLink.key).
SUBMITTED_JOB_KEY = "batch_job_details"


def run_job_ids(session, dag_id: str, run_id: str) -> set[str]:
    """Every Batch job the run submitted: the shard summaries' `job_ids`, and the job each Batch task recorded
    when it submitted it (a plain HouseBatchOperator's, as in batch_smoke, has no summary)."""
    from sqlalchemy import select

    from airflow.models.xcom import XComModel

    completed, failed = shard_summaries(session, dag_id, run_id)
    ids = {str(j) for s in [*completed.values(), *failed.values()] for j in s.get("job_ids", [])}
    for value in session.scalars(select(XComModel.value).where(
            XComModel.dag_id == dag_id, XComModel.run_id == run_id, XComModel.key == SUBMITTED_JOB_KEY)):
        value = json.loads(value) if isinstance(value, (str, bytes)) else value
        if isinstance(value, dict) and value.get("job_id"):
            ids.add(str(value["job_id"]))
    return ids


def planned_batches(session, dag_id: str, run_id: str) -> dict[int, int]:
    """{shard index: batch count} from the run's plan step (empty when it did not run)."""
    for _, _, value in xcoms(session, dag_id, run_id, (PLAN_TASK,)):
        if isinstance(value, list):
            return {int(item["shard"]["index"]): int(item["shard"]["stop"]) - int(item["shard"]["start"])
                    for item in value if isinstance(item, dict) and isinstance(item.get("shard"), dict)}
    return {}


def set_run_note(dag_run, session) -> str | None:
    """Write the run's note unless a person wrote one; returns the note written."""
    existing = dag_run.dag_run_note
    if existing is not None and existing.content and existing.user_id is not None:
        return None
    note = note_for_run(session, dag_run.dag_id, dag_run.run_id)
    if note:
        dag_run.note = note[:1000]
    return note


# --- the run's files, confined -------------------------------------------------------------------------

class OutsideRunFolders(PermissionError):
    pass


class UnsafePath(OutsideRunFolders):
    """A symbolic link, or something other than a folder or a regular file, between DATA_ROOT and a file."""


def _local_parts(data_root: str, path: str) -> tuple[str, list[str]]:
    """(the real DATA_ROOT, the components of `path` below it); OutsideRunFolders unless `path` is below it.

    DATA_ROOT itself may be a link (resolved here, once); nothing below it may be."""
    base, target = os.path.abspath(data_root), os.path.abspath(path)
    relative = os.path.relpath(target, base)
    if relative in (".", "..") or relative.startswith(".." + os.sep) or os.path.isabs(relative):
        raise OutsideRunFolders(f"{path} is not inside DATA_ROOT ({data_root})")
    return os.path.realpath(base), relative.split(os.sep)


def _open_step(parent: int, name: str, shown: str, folder: bool) -> int:
    """Open `name` in the folder `parent` without following a link; `shown` names it in errors."""
    # O_NONBLOCK: a FIFO planted in a run folder would block a plain open until someone writes to it.
    flags = os.O_RDONLY | os.O_NOFOLLOW | (os.O_DIRECTORY if folder else os.O_NONBLOCK)
    try:
        return os.open(name, flags, dir_fd=parent)
    except OSError as error:
        if error.errno not in (errno.ELOOP, errno.ENOTDIR):
            raise
        try:
            kind = os.lstat(name, dir_fd=parent).st_mode
        except OSError:
            raise error from None
        if stat.S_ISLNK(kind):
            raise UnsafePath(f"{shown} is a symbolic link: the run view does not follow links below DATA_ROOT "
                             "(a job may have planted it)") from None
        raise FileNotFoundError(errno.ENOENT, f"{shown} is not a folder", shown) from None


def open_beneath(data_root: str, path: str, folder: bool = False) -> int:
    """A descriptor of `path` (a local path below `data_root`) opened from the real DATA_ROOT one component at
    a time, each relative to the one before and none through a symbolic link; UnsafePath for a link or, at
    the end, anything but a regular file (or a folder when `folder`); FileNotFoundError when missing."""
    real_root, parts = _local_parts(data_root, path)
    current = os.open(real_root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for index, part in enumerate(parts):
            shown = "DATA_ROOT/" + "/".join(parts[:index + 1])
            opened = _open_step(current, part, shown, folder=folder or index < len(parts) - 1)
            os.close(current)
            current = opened
        kind = os.fstat(current).st_mode
        if folder and not stat.S_ISDIR(kind):
            raise FileNotFoundError(errno.ENOENT, "not a folder", path)
        if not folder and stat.S_ISDIR(kind):
            raise IsADirectoryError(errno.EISDIR, "a folder, not a file", path)
        if not folder and not stat.S_ISREG(kind):
            raise UnsafePath(f"DATA_ROOT/{'/'.join(parts)} is not a regular file (a FIFO, socket or device): "
                             "the run view reads only regular files")
        return current
    except BaseException:
        os.close(current)
        raise


def read_beneath(data_root: str, path: str) -> bytes:
    """The bytes of the regular file `path` below `data_root`, reached through no symbolic link."""
    with os.fdopen(open_beneath(data_root, path), "rb") as handle:
        return handle.read()


def read_folder_beneath(data_root: str, directory: str, wanted: Callable[[str], bool]) -> dict[str, bytes]:
    """{path: bytes} of the entries of `directory` (below `data_root`) whose names are `wanted`, each opened
    relative to the folder's own descriptor without following a link; {} when the folder does not exist."""
    try:
        folder = open_beneath(data_root, directory, folder=True)
    except FileNotFoundError:
        return {}
    found = {}
    try:
        shown = "DATA_ROOT/" + "/".join(_local_parts(data_root, directory)[1])
        for name in sorted(os.listdir(folder)):
            if not wanted(name):
                continue
            try:
                handle = _open_step(folder, name, f"{shown}/{name}", folder=False)
            except FileNotFoundError:  # removed meanwhile
                continue
            with os.fdopen(handle, "rb") as opened:
                if not stat.S_ISREG(os.fstat(opened.fileno()).st_mode):
                    raise UnsafePath(f"{shown}/{name} is not a regular file: the run view reads only regular files")
                found[os.path.join(directory, name)] = opened.read()
    finally:
        os.close(folder)
    return found


@dataclass
class RunFiles:
    """The folders of one run: its run folder and, when it registered one, its registry version.

    `data_root`: the DATA_ROOT both lie under (None: the DATA_ROOT setting when a file is read)."""

    run_root: str
    version_dir: str | None = None
    aws_conn_id: str | None = "aws_default"
    data_root: str | None = None
    _locations: dict[str, Any] = field(default_factory=dict)

    def roots(self) -> list[str]:
        return [r for r in (self.run_root, self.version_dir) if r]

    def resolve(self, relative: str, root: str | None = None) -> str:
        """The full URI of `relative` inside one of the run's folders; OutsideRunFolders otherwise."""
        root = root or self.run_root
        if root not in self.roots():
            raise OutsideRunFolders(f"{root} is not one of this run's folders")
        if not relative or "\\" in relative or "\x00" in relative or relative.startswith("/") or "://" in relative:
            raise OutsideRunFolders(f"{relative!r} is not a path inside the run's folders")
        normal = posixpath.normpath(relative)
        if normal in (".", "..") or normal.startswith("../") or any(part in ("..", "") for part in normal.split("/")):
            raise OutsideRunFolders(f"{relative!r} leaves the run's folders")
        return f"{root.rstrip('/')}/{normal}"

    def location(self, root: str):
        from operators.kit import engine

        if root not in self._locations:
            self._locations[root] = engine.location(root, self.aws_conn_id)
        return self._locations[root]

    def local_data_root(self) -> str:
        from operators.kit import engine

        return self.data_root or engine.data_root()

    def read(self, relative: str, root: str | None = None) -> bytes:
        root = root or self.run_root
        uri = self.resolve(relative, root)
        folder = self.location(root)
        if not folder.remote:
            return read_beneath(self.local_data_root(), uri)
        return folder.read_bytes(uri)

    def read_json(self, relative: str, root: str | None = None) -> Any:
        try:
            return json.loads(self.read(relative, root))
        except FileNotFoundError:
            return None

    def shard_results(self) -> dict[int, dict]:
        folder = self.location(self.run_root)
        prefix = folder.join("results")
        if folder.remote:
            found = folder.read_many(p for p in folder.list_files(prefix) if re.search(r"/shard-\d+\.json$", p))
        else:
            found = read_folder_beneath(self.local_data_root(), prefix,
                                        lambda name: re.fullmatch(r"shard-\d+\.json", name) is not None)
        results = {}
        for uri, raw in found.items():
            data = json.loads(raw)
            results[int(data["shard"]["index"])] = data
        return results


def version_folder_of(report_uri: str | None, run_id: str, dag_id: str, root: str,
                      aws_conn_id: str | None = "aws_default") -> tuple[str | None, dict | None]:
    """The registry version folder of the report the run's evaluation wrote, once its version.json says it
    belongs to this run; (None, None) otherwise."""
    from operators.kit import engine

    if not report_uri:
        return None, None
    folder = posixpath.dirname(report_uri)
    if not re.fullmatch(re.escape(root.rstrip("/")) + r"/registry/[A-Za-z0-9_.=~-]+/versions/[A-Za-z0-9_.=~:+-]+",
                        folder):
        return None, None
    try:
        place = engine.location(folder, aws_conn_id)
        record = json.loads(place.read_bytes(f"{folder}/version.json") if place.remote
                            else read_beneath(root, f"{folder}/version.json"))
    except FileNotFoundError:
        return None, None
    lineage = record.get("lineage") or {}
    if lineage.get("run_id") != run_id or lineage.get("dag_id") != dag_id:
        return None, None
    return folder, record


# --- the view's data -----------------------------------------------------------------------------------

def job_page_path(dag_id: str, run_id: str, job_id: str) -> str:
    """The run view's page of one of the run's Batch jobs (status, attempts, log tail), through the connection's
    endpoint: where the job's links point on an endpoint other than AWS's (the local one)."""
    return f"{run_view_path(dag_id, run_id)}/jobs/{quote(job_id, safe='')}"


def job_links(job_id: str, dag_id: str, run_id: str, region: str | None, local: bool) -> dict[str, str]:
    links = {"description": job_page_path(dag_id, run_id, job_id)}
    if not local and region:
        links["console"] = (f"https://{region}.console.aws.amazon.com/batch/home?region={region}"
                            f"#jobs/detail/{quote(job_id, safe='')}")
    return links


def run_data(session, dag_id: str, run_id: str, *, files: RunFiles | None = None, region: str | None = None,
             local: bool = True, shard_states: dict[int, str] | None = None) -> dict[str, Any]:
    """Everything the run view shows, as plain data."""
    from operators.kit import engine

    root = engine.data_root()
    files = files or RunFiles(engine.run_root_of(dag_id, run_id))
    completed, failed = shard_summaries(session, dag_id, run_id)
    results = files.shard_results()
    shards = []
    for index in sorted(set(results) | set(completed) | set(failed)):
        summary = completed.get(index) or failed.get(index) or {}
        result = results.get(index) or {}
        rows = result.get("batches") or []
        states = {s: sum(1 for b in rows if b["status"] == s) for s in ("succeeded", "cached", "failed")}
        shard_failed = index in failed or (shard_states or {}).get(index) in ("failed", "upstream_failed")
        by_class: dict[str, int] = {}
        first_errors: dict[str, str] = {}
        for failure in result.get("failed") or []:
            by_class[failure["class"]] = by_class.get(failure["class"], 0) + 1
            first_errors.setdefault(failure["class"], f"batch {failure['batch_id']}: {failure['error']}")
        shards.append({
            "shard": index, "label": summary.get("label") or (result.get("shard") or {}).get("label", f"shard {index}"),
            "state": (shard_states or {}).get(index) or ("failed" if shard_failed else "success" if summary else "unknown"),
            "batches": len(rows) or summary.get("batches", 0),
            "done": states["succeeded"], "cached": states["cached"],
            "failed": states["failed"] if shard_failed else 0,
            "dead_lettered": 0 if shard_failed else states["failed"],
            "failures_by_class": by_class or summary.get("failures_by_class", {}),
            "first_errors": first_errors or summary.get("first_errors", {}),
            "jobs": [{"job_id": j, **job_links(j, dag_id, run_id, region, local)} for j in summary.get("job_ids", [])],
        })
    counts = {k: sum(s[k] for s in shards) for k in ("batches", "done", "cached", "failed", "dead_lettered")}
    cost = files.read_json("cost.json")
    evaluation = next((v for _, _, v in xcoms(session, dag_id, run_id, (EVALUATE_TASK,)) if isinstance(v, dict)), None)
    version_dir, record = version_folder_of((evaluation or {}).get("report"), run_id, dag_id, root, files.aws_conn_id)
    if version_dir:
        files.version_dir = version_dir
    prepared = next((v for _, _, v in xcoms(session, dag_id, run_id, ("prepare",)) if isinstance(v, dict)), {}) or {}
    spec = next((r.get("shard") for r in results.values() if r.get("shard")), None) or {}
    lineage = (record or {}).get("lineage") or {
        "dag_id": dag_id, "run_id": run_id, "input_uri": prepared.get("input_uri"), "window": prepared.get("window"),
        "workload": spec.get("workload"), "workload_params": spec.get("params"), "manifest": spec.get("manifest")}
    version = None
    if record:
        version = {k: record.get(k) for k in ("model", "version", "status", "proposed_decision", "decision_reasons",
                                               "decided_by", "decided_at", "metrics")}
    dead = dead_letter_count(files)
    skipped = skip_reason(session, dag_id, run_id)
    note = skip_note(skipped) if skipped else note_text({**counts, "units_dead_lettered": dead}, cost)
    return {"dag_id": dag_id, "run_id": run_id, "counts": counts, "shards": shards, "cost": cost,
            "version": version, "lineage": lineage, "dead_letter_units": dead,
            "has_report": bool(version_dir), "note": note, "skipped": skipped,
            "sweep": sweep_data(session, dag_id, run_id, files)}


def dead_letter_frame(files: RunFiles):
    import pandas as pd

    try:
        data = files.read(DEAD_LETTER_FILE)
    except FileNotFoundError:
        return None
    return pd.read_parquet(io.BytesIO(data))


def dead_letter_count(files: RunFiles) -> int:
    frame = dead_letter_frame(files)
    return 0 if frame is None else len(frame)


def dead_letter_page(files: RunFiles, page: int, size: int = PAGE_SIZE) -> dict[str, Any]:
    frame = dead_letter_frame(files)
    if frame is None:
        return {"total": 0, "page": 1, "pages": 1, "columns": [], "rows": []}
    pages = max(1, -(-len(frame) // size))
    page = min(max(1, page), pages)
    chunk = frame.iloc[(page - 1) * size: page * size]
    rows = json.loads(chunk.to_json(orient="values", date_format="iso"))
    return {"total": len(frame), "page": page, "pages": pages, "columns": [str(c) for c in frame.columns], "rows": rows}


#: What a spreadsheet reads as the start of a formula (OWASP, "CSV injection").
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def formula_safe(value: Any) -> Any:
    """A text cell that a spreadsheet would run as a formula (a unit key "=HYPERLINK(...)") with a leading
    quote, so it opens as the text it is; every other value as it is."""
    return "'" + value if isinstance(value, str) and value.startswith(FORMULA_STARTS) else value


def dead_letter_csv(files: RunFiles) -> str:
    frame = dead_letter_frame(files)
    if frame is None:
        return ""
    text_columns = [column for column in frame.columns if frame[column].dtype == object or str(frame[column].dtype)
                    in ("string", "str")]
    safe = frame.copy()
    for column in text_columns:
        safe[column] = safe[column].map(formula_safe)
    return safe.to_csv(index=False)


# --- the page --------------------------------------------------------------------------------------------

def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _table(headers: list[str], rows: list[list[Any]], raw_columns: tuple[int, ...] = ()) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell if i in raw_columns else _e(cell)}</td>" for i, cell in enumerate(row))
                   + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _shown(value: Any) -> str:
    from operators.kit.evaluation import number

    if isinstance(value, (list, dict)):
        return json.dumps(value, default=str)
    return number(value)


STYLE = """body{font-family:sans-serif;margin:1em;color:#222}table{border-collapse:collapse;margin:.5em 0}
th,td{border:1px solid #ccc;padding:2px 8px;text-align:left;vertical-align:top}.failed{color:#b00}
iframe{width:100%;height:900px;border:1px solid #ccc}.note{font-size:1.1em;background:#f4f4f4;padding:.4em}"""


def run_alarms(files: RunFiles) -> dict[str, Any] | None:
    """What the run published to CloudWatch and its pipeline's alarms (the run folder's alarms.json), each alarm's
    state as CloudWatch holds it now when it answers (operators.kit.alarms); None when the run published nothing."""
    from operators.kit import alarms

    try:
        record = files.read_json(alarms.RECORD_FILE)
    except (FileNotFoundError, IsADirectoryError, ValueError):
        return None
    return alarms.run_view_alarms(record, files.aws_conn_id or "aws_default") if isinstance(record, dict) else None


def render_alarms(record: dict[str, Any] | None) -> str:
    """The run view's Alarms section: each alarm of the pipeline with its state, threshold and the run's value."""
    parts = ['<h2 id="alarms">Alarms</h2>']
    if not record:
        return parts[0] + "<p>This run published no metrics (its last summary stage has not run).</p>"
    if record.get("error"):
        return parts[0] + f"<p>{_e(record['error'])}</p>"
    dims = ", ".join(f"{k}={v}" for k, v in (record.get("dimensions") or {}).items())
    parts.append(f"<p>Metrics in CloudWatch namespace <code>{_e(record.get('namespace'))}</code>, {_e(dims)}; "
                 f"alarms evaluated by {_e(record.get('evaluated_by'))}"
                 + ("" if record.get("live", True) else f"; states as the run recorded them "
                                                         f"(CloudWatch did not answer: {_e(record.get('live_error'))})")
                 + ".</p>")
    if record.get("alarms"):
        parts.append(_table(["alarm", "state", "metric", "condition", "this run", "why"], [
            [a["name"], a["state"], a["metric"], f"{a['comparison']} {a['threshold']:g}",
             "" if a.get("value") is None else f"{a['value']:g}", a.get("reason") or ""] for a in record["alarms"]]))
    else:
        parts.append("<p>No alarm is declared for this pipeline (config/batch_resources.json, alarms).</p>")
    return "".join(parts)


def render_page(data: dict[str, Any], dead: dict[str, Any], shard: int | None = None) -> str:
    """The run view as one HTML page (no script): every value escaped."""
    from operators.kit.cost import money, quantity

    base = run_view_path(data["dag_id"], data["run_id"])
    shards = [s for s in data["shards"] if shard is None or s["shard"] == shard]
    shard_rows = []
    for s in shards:
        classes = ", ".join(f"{k}: {v}" for k, v in s["failures_by_class"].items())
        errors = "<br>".join(f"{_e(k)}: {_e(v)}" for k, v in s["first_errors"].items())
        jobs = "<br>".join(
            f'<a href="{_e(j["description"])}">{_e(j["job_id"])}</a>'
            + (f' (<a href="{_e(j["console"])}" target="_blank" rel="noopener">AWS console</a>)' if "console" in j else "")
            for j in s["jobs"])
        shard_rows.append([s["label"], s["state"], f"{s['batches']:,}", f"{s['done']:,}", f"{s['cached']:,}",
                           f"{s['failed']:,}", f"{s['dead_lettered']:,}", classes, errors, jobs])
    parts = [f"<h1>Run {_e(data['run_id'])} of {_e(data['dag_id'])}</h1>",
             f'<p class="note" id="note">{_e(data["note"])}</p>',
             "<h2>Batches by shard</h2>" + (f'<p>Shard {shard} only; <a href="{_e(base)}">the whole run</a></p>'
                                             if shard is not None else ""),
             _table(["shard", "state", "batches", "done", "cached", "failed", "dead-lettered", "failure classes",
                     "first errors", "Batch jobs"], shard_rows, raw_columns=(8, 9))]
    if data.get("sweep"):
        parts.append(render_sweep(data["sweep"], base))
    cost = data.get("cost")
    parts.append("<h2>Cost</h2>")
    if cost:
        currency = cost.get("currency", "USD")
        parts.append(f'<p id="cost">{money(cost["cost"], currency)} for the run, {money(cost.get("per_unit"), currency)}'
                     f" per unit; {quantity(cost['vcpu_hours'])} vCPU-hours, {quantity(cost['gpu_hours'])} GPU-hours. "
                     f"<i>{_e(cost['label'])}</i></p>")
        parts.append(_table(["shard", "jobs", "seconds", "vCPU-hours", "GPU-hours", "cost", "per unit"], [
            [c["shard"], c["jobs"], f"{c['seconds']:,.1f}", quantity(c["vcpu_hours"]), quantity(c["gpu_hours"]),
             money(c["cost"], currency), money(c["cost"] / c["units"] if c["units"] else None, currency)]
            for c in cost["shards"]]))
    elif data.get("skipped"):
        parts.append("<p>No cost: the run skipped itself before any Batch job (see the note above).</p>")
    else:
        parts.append("<p>No cost recorded (the run's collect step has not run; for a sweep, its summary step).</p>")
    parts.append(f"<h2>Dead-letter units ({dead['total']:,})</h2>")
    if dead["total"]:
        parts.append(f'<p><a href="{_e(base)}/dead_letter.csv" download>Download all as CSV</a></p>')
        parts.append(_table(dead["columns"], dead["rows"]))
        links = []
        if dead["page"] > 1:
            links.append(f'<a href="{_e(base)}?page={dead["page"] - 1}">previous</a>')
        links.append(f"page {dead['page']} of {dead['pages']}")
        if dead["page"] < dead["pages"]:
            links.append(f'<a href="{_e(base)}?page={dead["page"] + 1}">next</a>')
        parts.append("<p>" + " | ".join(links) + "</p>")
    version = data.get("version")
    parts.append("<h2>Registry version</h2>")
    if version:
        parts.append(_table(["model", "version", "status", "proposed", "decided by", "reasons"], [[
            version["model"], version["version"], version["status"], version["proposed_decision"],
            version["decided_by"] or "(not decided)", "; ".join(version.get("decision_reasons") or [])]]))
    else:
        parts.append("<p>This run registered no version.</p>")
    if "alarms" in data:
        parts.append(render_alarms(data["alarms"]))
    parts.append("<h2>Lineage</h2>" + _table(["", ""], [[k, _shown(v)] for k, v in data["lineage"].items()
                                                        if k != "cost"]))
    if data.get("has_report"):
        parts.append(f'<h2>Report</h2><p><a href="{_e(base)}/report" target="_blank">open alone</a></p>'
                     f'<iframe title="report" src="{_e(base)}/report"></iframe>')
    return (f'<!doctype html><html><head><meta charset="utf-8"><title>Run {_e(data["run_id"])}</title>'
            f"<style>{STYLE}</style></head><body>{''.join(parts)}</body></html>")


# --- a sweep's results ------------------------------------------------------------------------------------

#: The report a sweep's summary step writes in its run folder (operators/pipelines/sweep/outcome.py).
SWEEP_REPORT = "report.md"
#: Failed configurations listed by name on the page (all are in the report's history tables).
SWEEP_FAILED_SHOWN = 20


def sweep_data(session, dag_id: str, run_id: str, files: RunFiles) -> dict[str, Any] | None:
    """A sweep's results from its `summary` step's XCom (the one that carries a leaderboard): the leaderboard,
    configurations by state, failures by class, the earlier sweeps of the DAG as the history kept them when
    this one ended, and whether its `report.md` is in the run folder; None for any other run."""
    summary = next((v for _, _, v in xcoms(session, dag_id, run_id, ("summary",))
                    if isinstance(v, dict) and "leaderboard" in v), None)
    if summary is None:
        return None
    try:
        files.read(SWEEP_REPORT)
        report = SWEEP_REPORT
    except (FileNotFoundError, IsADirectoryError, UnsafePath):
        report = None
    leaderboard = [{"rank": rank, "config_id": leader.get("config_id"),
                    "settings": leader.get("settings") or json.dumps(leader.get("hyperparameters"), sort_keys=True),
                    "score": leader.get("score"), "holdout_auc": leader.get("holdout_auc"),
                    "status": leader.get("status")}
                   for rank, leader in enumerate(summary.get("leaderboard") or [], start=1) if isinstance(leader, dict)]
    return {"configurations": summary.get("configurations"), "counts": summary.get("counts") or {},
            "leaderboard": leaderboard, "failures_by_class": summary.get("failures_by_class") or {},
            "failed_configurations": (summary.get("failed_configurations") or [])[:SWEEP_FAILED_SHOWN],
            "failed_total": (summary.get("counts") or {}).get("failed", 0),
            "trend": summary.get("trend") or [], "history": summary.get("history_sweeps") or [],
            "duplicates": summary.get("duplicates", 0), "capacity_shortages": summary.get("capacity_shortages") or [],
            "throttled_submits": summary.get("throttled_submits", 0), "report": report}


def _score(value: Any, digits: int = 6) -> str:
    return "" if not isinstance(value, (int, float)) or isinstance(value, bool) else f"{value:.{digits}g}"


def render_sweep(sweep: dict[str, Any], base: str) -> str:
    """The sweep section of the run view: leaderboard, failures by class, the history, the report's link."""
    counts = ", ".join(f"{n:,} {state}" for state, n in sorted(sweep["counts"].items()))
    parts = ['<h2 id="sweep">Sweep</h2>',
             f"<p>{sweep['configurations'] or 0:,} configurations: {_e(counts)}"
             + (f"; {sweep['duplicates']:,} repeat an earlier configuration (status duplicate)"
                if sweep.get("duplicates") else "") + "</p>"]
    if sweep["report"]:
        parts.append(f'<p>The whole report: <a id="sweep-report" href="{_e(base)}/files/{_e(sweep["report"])}" '
                     f'target="_blank">{_e(sweep["report"])}</a></p>')
    parts.append('<h3 id="leaderboard">Leaderboard (lowest holdout log-loss first)</h3>')
    if sweep["leaderboard"]:
        parts.append(_table(["rank", "configuration", "hyper-parameters", "score (holdout log-loss)", "holdout AUC",
                             "status"],
                            [[r["rank"], r["config_id"], r["settings"], _score(r["score"]),
                              _score(r["holdout_auc"], 4), r["status"]] for r in sweep["leaderboard"]]))
    else:
        parts.append("<p>No configuration was trained.</p>")
    parts.append('<h3 id="sweep-failures">Failures by class</h3>')
    if sweep["failures_by_class"]:
        parts.append(_table(["class", "configurations", "first error"], [
            [kind, f"{entry.get('count', 0):,}", entry.get("first_error")]
            for kind, entry in sorted(sweep["failures_by_class"].items()) if isinstance(entry, dict)]))
        failed = sweep["failed_configurations"]
        if failed:
            parts.append(_table(["failed configuration", "class", "attempts", "queue", "error"], [
                [f.get("config_id"), f.get("failure_class"), f.get("attempts"), f.get("queue"), f.get("error")]
                for f in failed if isinstance(f, dict)]))
            if sweep["failed_total"] > len(failed):
                parts.append(f"<p>{sweep['failed_total'] - len(failed):,} more failed configurations: see the "
                             "report and the job history.</p>")
    else:
        parts.append("<p>No configuration failed.</p>")
    for shortage in sweep["capacity_shortages"]:
        if isinstance(shortage, dict):
            parts.append(f"<p>Capacity: job {_e(shortage.get('job_id'))}: {_e(shortage.get('reason'))}</p>")
    if sweep["throttled_submits"]:
        parts.append(f"<p>{sweep['throttled_submits']:,} throttled SubmitJob calls were retried with backoff.</p>")
    parts.append('<h3 id="sweep-history">History: sweeps of this DAG until this one (newest first)</h3>')
    if sweep["history"]:
        parts.append(_table(["started", "run", "configurations", "trained", "cached", "failed", "best", "score"], [
            [h.get("started"), h.get("run_id"), h.get("configurations"), h.get("trained"), h.get("cached"),
             h.get("failed"), h.get("best_config_id"), _score(h.get("best_score"))]
            for h in sweep["history"] if isinstance(h, dict)]))
    else:
        parts.append("<p>This sweep's summary kept no history of earlier sweeps.</p>")
    if sweep["trend"]:
        parts.append("<p>Failures by class in the last sweeps:</p>" + _table(["started", "run", "class", "failed"], [
            [t.get("started"), t.get("run_id"), t.get("failure_class"), t.get("failed")]
            for t in sweep["trend"] if isinstance(t, dict)]))
    return "".join(parts)


# --- a Batch job's page ------------------------------------------------------------------------------------

#: How many lines of a job's log its page shows, and how many failed children it lists.
JOB_LOG_LINES = 40
JOB_CHILDREN_SHOWN = 20


def _when(epoch_ms: Any) -> str:
    import datetime as dt

    if not isinstance(epoch_ms, (int, float)) or isinstance(epoch_ms, bool):
        return ""
    return dt.datetime.fromtimestamp(epoch_ms / 1000, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def log_stream_of(job: dict[str, Any]) -> str | None:
    """The log stream of the job's last attempt (a plain job or an array child), else of its container."""
    attempts = job.get("attempts") or []
    if attempts and (attempts[-1].get("container") or {}).get("logStreamName"):
        return attempts[-1]["container"]["logStreamName"]
    return (job.get("container") or {}).get("logStreamName")


def render_job_page(dag_id: str, run_id: str, job: dict[str, Any], log_lines: list[str] | None,
                    failed_children: list[dict[str, Any]]) -> str:
    """One Batch job as DescribeJobs tells it through the connection's endpoint: status, queue, definition,
    array children, every attempt and the tail of the log. Read-only; every value escaped; no script."""
    base = run_view_path(dag_id, run_id)
    array = job.get("arrayProperties") or {}
    rows = [["job id", job.get("jobId")], ["name", job.get("jobName")],
            ["status", job.get("status")], ["status reason", job.get("statusReason")],
            ["queue", job.get("jobQueue")], ["job definition", job.get("jobDefinition")],
            ["created", _when(job.get("createdAt"))], ["started", _when(job.get("startedAt"))],
            ["stopped", _when(job.get("stoppedAt"))]]
    if array.get("size"):
        summary = ", ".join(f"{n} {state}" for state, n in (array.get("statusSummary") or {}).items() if n)
        rows.append(["array", f"{array['size']} children" + (f": {summary}" if summary else "")])
    if "index" in array:
        rows.append(["array index", array["index"]])
    parts = [f"<h1>AWS Batch job {_e(job.get('jobId'))}</h1>",
             f'<p>Of run <a href="{_e(base)}">{_e(run_id)}</a> of {_e(dag_id)}; as DescribeJobs returns it through '
             f'the connection\'s endpoint (<a href="{_e(job_page_path(dag_id, run_id, str(job.get("jobId"))))}'
             f'/data.json">JSON</a>).</p>',
             '<h2 id="job">Job</h2>', _table(["", ""], [r for r in rows if r[1] not in (None, "")])]
    if array.get("size"):
        parts.append("<h2>Failed children</h2>")
        if failed_children:
            parts.append(_table(["child", "status reason"], [
                [f'<a href="{_e(job_page_path(dag_id, run_id, c["jobId"]))}">{_e(c["jobId"])}</a>',
                 _e(c.get("statusReason"))] for c in failed_children[:JOB_CHILDREN_SHOWN]], raw_columns=(0, 1)))
            if len(failed_children) > JOB_CHILDREN_SHOWN:
                parts.append(f"<p>{len(failed_children) - JOB_CHILDREN_SHOWN:,} more not shown.</p>")
        else:
            parts.append("<p>None.</p>")
        parts.append(f"<p>A child's page: {_e(job_page_path(dag_id, run_id, str(job.get('jobId'))))}:&lt;index&gt;</p>")
    attempts = job.get("attempts") or []
    parts.append(f"<h2>Attempts ({len(attempts)})</h2>")
    if attempts:
        parts.append(_table(["#", "started", "stopped", "exit code", "reason", "log stream"], [
            [number, _when(a.get("startedAt")), _when(a.get("stoppedAt")), (a.get("container") or {}).get("exitCode"),
             "; ".join(str(x) for x in (a.get("statusReason"), (a.get("container") or {}).get("reason")) if x),
             (a.get("container") or {}).get("logStreamName")] for number, a in enumerate(attempts, start=1)]))
    parts.append(f'<h2 id="log">Log (last {JOB_LOG_LINES} lines)</h2>')
    if log_lines is None:
        parts.append("<p>No log stream" + (" (an array job logs per child: open a child's page)" if array.get("size")
                                           else "") + ".</p>")
    else:
        parts.append("<pre>" + _e("\n".join(log_lines) or "(empty)") + "</pre>")
    return (f'<!doctype html><html><head><meta charset="utf-8"><title>Job {_e(job.get("jobId"))}</title>'
            f"<style>{STYLE}</style></head><body>{''.join(parts)}</body></html>")
