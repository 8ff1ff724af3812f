"""The house BatchOperator: the provider's operator with this project's defaults and diagnostics.

Each default has its reason next to it. DAG files pass only what differs per pipeline.
"""
from __future__ import annotations

import time
from typing import Any

from airflow.providers.amazon.aws.hooks.logs import AwsLogsHook
from airflow.providers.amazon.aws.operators.batch import BatchOperator
from airflow.sdk.exceptions import AirflowException

from operators.triggers import ENDED, progress_line

#: How many failed children are shown, with their reason and the tail of their log.
FAILED_CHILDREN_SHOWN = 3
LOG_TAIL_LINES = 40


class HouseBatchOperator(BatchOperator):
    """BatchOperator that waits at a steady pace, shows array progress, and explains failures.

    The provider's sync wait sleeps 1-10 s three times before its first poll and then backs off to
    minutes; a steady `poll_interval` keeps the task's view fresh at one DescribeJobs call per poll.
    On failure the task log shows, for the first failed children, their status reason, exit code
    and the tail of their CloudWatch log, so nobody has to open the Batch console to triage.
    """

    def __init__(
        self,
        *,
        poll_interval: float = 10,
        aws_conn_id: str | None = "aws_default",  # local endpoint or AWS, chosen by the connection
        awslogs_enabled: bool = True,  # job output belongs in the task log
        **kwargs: Any,
    ):
        super().__init__(poll_interval=poll_interval, aws_conn_id=aws_conn_id,
                         awslogs_enabled=awslogs_enabled, **kwargs)

    def monitor_job(self, context) -> None:
        if not self.job_id:
            raise ValueError("AWS Batch job - job_id was not found")
        self._persist_links(context)
        job = self.wait_until_ended(self.job_id)
        self._persist_cloudwatch_link(context)
        if job["status"] == "FAILED":
            self.explain_failure(job)
            raise AirflowException(f"AWS Batch job {self.job_id} FAILED: {job.get('statusReason', 'no reason given')}")
        if not job.get("arrayProperties", {}).get("size"):
            self.log_tail(job, label="job")
        self.log.info("AWS Batch job %s SUCCEEDED", self.job_id)

    def describe(self, job_id: str) -> dict[str, Any]:
        jobs = self.hook.client.describe_jobs(jobs=[job_id])["jobs"]
        if not jobs:
            raise AirflowException(f"AWS Batch job {job_id} not found")
        return jobs[0]

    def wait_until_ended(self, job_id: str) -> dict[str, Any]:
        last_progress = None
        while True:
            job = self.describe(job_id)
            progress = self.progress_line(job)
            if progress != last_progress:
                self.log.info("AWS Batch job %s: %s", job_id, progress)
                last_progress = progress
            if job["status"] in ENDED:
                return job
            time.sleep(self.poll_interval)

    progress_line = staticmethod(progress_line)

    def explain_failure(self, job: dict[str, Any]) -> None:
        self.log.error("AWS Batch job %s FAILED: %s", job["jobId"], job.get("statusReason", "no reason given"))
        if not job.get("arrayProperties", {}).get("size"):
            self.log_tail(job, label="job")
            return
        failed = self.failed_children(job["jobId"])
        self.log.error("%d array children FAILED; showing %d", len(failed), min(len(failed), FAILED_CHILDREN_SHOWN))
        for summary in failed[:FAILED_CHILDREN_SHOWN]:
            self.log_tail(self.describe(summary["jobId"]), label=f"child {summary['jobId']}")

    def failed_children(self, parent_id: str) -> list[dict[str, Any]]:
        paginator = self.hook.client.get_paginator("list_jobs")
        failed: list[dict[str, Any]] = []
        for page in paginator.paginate(arrayJobId=parent_id, jobStatus="FAILED"):
            failed.extend(page["jobSummaryList"])
        return sorted(failed, key=lambda s: s.get("arrayProperties", {}).get("index", 0))

    def log_tail(self, job: dict[str, Any], label: str) -> None:
        attempts = job.get("attempts") or []
        for number, attempt in enumerate(attempts, start=1):
            container = attempt.get("container", {})
            self.log.info("%s attempt %d/%d: exit code %s, %s%s", label, number, len(attempts),
                          container.get("exitCode"), attempt.get("statusReason", ""),
                          f" ({container['reason']})" if container.get("reason") else "")
        stream = (attempts[-1].get("container", {}).get("logStreamName") if attempts
                  else job.get("container", {}).get("logStreamName"))
        if not stream:
            return
        for line in self.log_lines(stream)[-LOG_TAIL_LINES:]:
            self.log.info("%s | %s", label, line)

    def log_lines(self, stream: str) -> list[str]:
        logs = AwsLogsHook(aws_conn_id=self.aws_conn_id, region_name=self.region_name).conn
        try:
            events = logs.get_log_events(logGroupName="/aws/batch/job", logStreamName=stream,
                                         startFromHead=False, limit=LOG_TAIL_LINES)["events"]
        except logs.exceptions.ResourceNotFoundException:
            return []
        return [event["message"] for event in events]


#: task_state_store key holding the submitted job of the current shard (survives retries and worker deaths).
STATE_KEY = "batch_job"
SHARD_LABEL = "{{ task.shard.label }}"
ACTIVE = ("SUBMITTED", "PENDING", "RUNNABLE", "STARTING", "RUNNING")


class UnitsOfWorkOperator(HouseBatchOperator):
    """Runs one shard of a unit-of-work pipeline as ONE AWS Batch array job, resuming what is not done.

    `shard` is a descriptor from `operators.engine.plan_shards` (mapped with `.expand_kwargs()`;
    pass `map_index_template=SHARD_LABEL` to `.partial()` to name each instance "shard 3: batches ...").
    On every try it

    - reattaches to the job an earlier try submitted if that job is still active (the job id is
      kept in Airflow's `task_state_store`), so a dead Airflow worker never causes a duplicate;
    - otherwise lists the shard's batches without a valid done-marker (cache key = batch content
      hash + workload version + parameters), writes a worklist and submits one array job whose
      children each take a slice of it (nothing is submitted when every batch is cached);
    - waits (in the triggerer when `deferrable`), terminating the job if the task is killed;
    - reads every batch's marker and pushes a summary (also under XCom key `summary` when it fails).

    The task fails when fewer than `min_success_ratio` of the shard's batches are done; a retry or
    a clear then resumes only the failed batches. At or above the ratio it succeeds, and the failed
    batches are listed in the summary and the shard's results file: the dead-letter list.
    """

    template_fields = (*HouseBatchOperator.template_fields, "shard", "min_success_ratio", "batches_per_child")

    def __init__(self, *, shard: dict[str, Any], job_name: str = "units-of-work",
                 min_success_ratio: float | str | None = None, batches_per_child: int | str | None = None,
                 **kwargs: Any):
        super().__init__(job_name=job_name, **kwargs)
        self.shard = shard
        self.min_success_ratio = min_success_ratio
        self.batches_per_child = batches_per_child

    # --- the flow -------------------------------------------------------------------------------

    def execute(self, context):
        from operators import engine

        spec = engine.ShardSpec.from_dict(self.shard)
        started = time.time()
        batches = engine.shard_batches(spec, self.aws_conn_id)
        store = context.get("task_state_store")
        state = store.get(STATE_KEY) if store is not None else None
        if state:
            job = self.describe_or_none(state["job_id"])
            if job is not None and job["status"] in ACTIVE:
                self.log.info("Reattaching to AWS Batch job %s (%s) submitted by an earlier try; not submitting "
                              "again", state["job_id"], job["status"])
                self.job_id = state["job_id"]
                return self.wait_and_collect(context, spec, state, batches, started)
            self.log.info("The earlier try's AWS Batch job %s ended %s; resuming the batches without a done-marker",
                          state["job_id"], job["status"] if job else "(no longer known to Batch)")
        job_ids = list(state["job_ids"]) if state else []

        out = engine.location(spec.output_root, self.aws_conn_id)
        done = engine.done_markers(out, batches)
        pending = [b for b in batches if b["key"] not in done]
        self.log.info("%s: %d batches, %d already done (cached), %d pending", spec.label, len(batches),
                      len(batches) - len(pending), len(pending))
        if not pending:  # cached, or computed by an earlier try's job that ended while no worker watched
            earlier = self.submitted_keys(state) if state else set()
            result = engine.outcome(spec, batches, earlier, state["job_id"] if state else None, {}, self.aws_conn_id)
            return self.finish(context, spec, result, job_ids, started)

        requested = self.batches_per_child if self.batches_per_child not in (None, "", "None", 0, "0") else None
        per_child, children = engine.children_plan(len(pending), int(requested) if requested else spec.batches_per_child)
        ti = context["ti"]
        run = {"dag_id": ti.dag_id, "run_id": ti.run_id, "task_id": ti.task_id, "map_index": ti.map_index,
               "try_number": ti.try_number}
        worklist = engine.write_worklist(spec, pending, per_child, run, self.aws_conn_id)
        self.job_name = engine.safe_name(f"{ti.dag_id}-{ti.task_id}-shard{spec.index}").replace(".", "-")[:128]
        self.array_properties = {"size": children} if children > 1 else {}
        self.parameters = {"worklist": worklist}
        if self.retry_strategy is None:
            from operators.provisioning import load_spec

            self.retry_strategy = load_spec()["retry_strategy"]
        self.log.info("Submitting one %s for %d pending batches: %d child(ren) of up to %d batches; worklist %s",
                      "array job" if children > 1 else "job", len(pending), children, per_child, worklist)
        self.submit_job(context)
        state = {"job_id": self.job_id, "worklist": worklist, "job_ids": [*job_ids, self.job_id],
                 "worklists": [*(state.get("worklists", []) if state else []), worklist], "submitted_at": started}
        if store is not None:
            store.set(STATE_KEY, state)
        return self.wait_and_collect(context, spec, state, batches, started)

    def wait_and_collect(self, context, spec, state: dict[str, Any], batches: list[dict[str, Any]], started: float):
        if self.deferrable:
            from operators.triggers import BatchJobWaitTrigger

            self.defer(trigger=BatchJobWaitTrigger(job_id=state["job_id"], aws_conn_id=self.aws_conn_id,
                                                   region_name=self.region_name, poll_interval=self.poll_interval),
                       method_name="execute_complete", kwargs={"state": state, "started": started})
        job = self.wait_until_ended(state["job_id"])
        return self.collect(context, spec, state, job, batches, started)

    def execute_complete(self, context, event: dict[str, Any] | None = None, state: dict[str, Any] | None = None,
                         started: float | None = None):
        from operators import engine

        spec = engine.ShardSpec.from_dict(self.shard)
        if state is None:  # the triggerer path keeps next_kwargs; the state store has it either way
            state = context["task_state_store"].get(STATE_KEY)
        self.job_id = state["job_id"]
        job = self.describe_or_none(state["job_id"]) or {"jobId": state["job_id"], "status": "FAILED",
                                                           "statusReason": (event or {}).get("reason", "job not found")}
        return self.collect(context, spec, state, job, engine.shard_batches(spec, self.aws_conn_id),
                            started or state.get("submitted_at") or time.time())

    def collect(self, context, spec, state: dict[str, Any], job: dict[str, Any], batches: list[dict[str, Any]],
                started: float):
        from operators import engine

        if job["status"] == "FAILED":
            self.explain_failure(job)
        worklist = engine.location(state["worklist"], self.aws_conn_id).read_json()
        reasons = self.child_reasons(job, worklist) if job["status"] == "FAILED" else {}
        result = engine.outcome(spec, batches, self.submitted_keys(state), job["jobId"], reasons, self.aws_conn_id)
        return self.finish(context, spec, result, list(state["job_ids"]), started)

    def finish(self, context, spec, result, job_ids: list[str], started: float) -> dict[str, Any]:
        from operators import engine

        root = engine.location(spec.run_root, self.aws_conn_id)
        results_uri = root.join("results", f"shard-{spec.index}.json")
        root.write_json(results_uri, result.results())
        summary = result.summary(job_ids, time.time() - started, results_uri)
        self.log.info("%s: %d batches: %d succeeded, %d cached, %d failed (%.1f%% done); results %s", spec.label,
                      summary["batches"], summary["succeeded"], summary["cached"], summary["failed"],
                      100 * result.success_ratio, results_uri)
        for kind, error in summary["first_errors"].items():
            self.log.warning("first %s failure: %s", kind, error)
        ratio = float(self.min_success_ratio if self.min_success_ratio not in (None, "", "None")
                      else spec.min_success_ratio)
        if result.success_ratio < ratio:
            context["ti"].xcom_push(key="summary", value=summary)
            raise AirflowException(
                f"{spec.label}: {summary['failed']} of {summary['batches']} batches failed "
                f"({100 * result.success_ratio:.1f}% done, min_success_ratio {ratio}); first errors: "
                f"{summary['first_errors']}. A retry or a clear of this task resumes only the failed batches.")
        if summary["failed"]:
            self.log.warning("%d failed batches are dead-lettered (min_success_ratio %s): %s", summary["failed"],
                             ratio, summary["failed_batches"])
        return summary

    # --- Batch helpers ----------------------------------------------------------------------------

    def submitted_keys(self, state: dict[str, Any]) -> set[str]:
        """Batches this task instance submitted in any of its tries: done ones count as succeeded, not cached."""
        from operators import engine

        keys: set[str] = set()
        for uri in state.get("worklists") or [state["worklist"]]:
            keys |= {item["key"] for item in engine.location(uri, self.aws_conn_id).read_json()["items"]}
        return keys

    def describe_or_none(self, job_id: str) -> dict[str, Any] | None:
        jobs = self.hook.client.describe_jobs(jobs=[job_id])["jobs"]
        return jobs[0] if jobs else None

    def child_reasons(self, job: dict[str, Any], worklist: dict[str, Any]) -> dict[str, str]:
        """The Batch-side reason for each batch whose child FAILED, by cache key."""
        items, per_child = worklist["items"], int(worklist["batches_per_child"])
        if not job.get("arrayProperties", {}).get("size"):
            reason = job.get("statusReason", "job FAILED")
            return {item["key"]: reason for item in items}
        reasons = {}
        for child in self.failed_children(job["jobId"]):
            index = child.get("arrayProperties", {}).get("index", 0)
            exit_code = child.get("container", {}).get("exitCode")
            text = f"child {index}: {child.get('statusReason', 'FAILED')}" + (
                f" (exit code {exit_code})" if exit_code is not None else "")
            for item in items[index * per_child:(index + 1) * per_child]:
                reasons[item["key"]] = text
        return reasons

    def on_kill(self) -> None:
        """Terminate the shard's job (every array child) when the task is failed or cleared while it waits."""
        if self.job_id:
            super().on_kill()


def run_shards(shards, *, task_id: str = "run_shard", poll_interval: float = 2, **kwargs: Any):
    """The mapped shard task of a pipeline whose `queue` param names the Batch queue (airbatch-cpu/-gpu).

    The job definition follows the queue (the GPU one asks for a GPU). A retry resumes only the
    batches that are not done; Spot and host losses never reach it (Batch's retry strategy takes
    them). SHARD_RETRY_DELAY_S sets the delay before that retry (default 30 s).
    """
    import os
    from datetime import timedelta

    return UnitsOfWorkOperator.partial(
        task_id=task_id,
        job_queue="{{ params.queue }}",
        job_definition="{{ 'airbatch-worker-gpu' if params.queue == 'airbatch-gpu' else 'airbatch-worker-cpu' }}",
        poll_interval=poll_interval,
        map_index_template=SHARD_LABEL,
        retries=kwargs.pop("retries", 1),
        retry_delay=timedelta(seconds=float(os.environ.get("SHARD_RETRY_DELAY_S", "30"))),
        **kwargs,
    ).expand_kwargs(shards)
