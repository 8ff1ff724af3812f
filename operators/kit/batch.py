"""The house BatchOperator: the provider's operator with this project's defaults and diagnostics.

Each default has its reason next to it. DAG files pass only what differs per pipeline.
"""
from __future__ import annotations

import time
from datetime import timedelta
from typing import Any, Sequence

from airflow.providers.amazon.aws.links.batch import BatchJobDefinitionLink, BatchJobDetailsLink, BatchJobQueueLink
from airflow.providers.amazon.aws.links.logs import CloudWatchEventsLink
from airflow.providers.amazon.aws.operators.batch import BatchOperator
from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowTaskTimeout

from batch_worker.exit_codes import EXIT_CLASSES

from operators.kit.batch_hook import SHARD_TIMEOUT_REASON, HouseBatchHook
from operators.kit.job_states import ACTIVE, ENDED, FAILED
from operators.kit.triggers import CAPACITY_WAIT, TIMEOUT, CapacityWatch, progress_line, queue_name

#: How many failed children are shown, with their reason and the tail of their log.
FAILED_CHILDREN_SHOWN = 3
LOG_TAIL_LINES = 40
#: How long a Batch task may wait when its DAG gives no execution_timeout: a wait never runs unbounded.
DEFAULT_EXECUTION_TIMEOUT = timedelta(hours=6)


#: The first pause between two DescribeJobs calls of a wait; each next pause is POLL_GROWTH times longer, up
#: to `poll_interval`, so a job's end is seen within a tenth of its run time plus FIRST_POLL_S (a 4 s job's
#: within 0.65 s) and a job of hours costs no more calls than a steady poll (about 40 more in all).
FIRST_POLL_S = 0.25
POLL_GROWTH = 1.1


def next_poll_pause(pause: float, poll_interval: float) -> float:
    return min(max(pause, FIRST_POLL_S) * POLL_GROWTH, poll_interval)


def with_data_root(overrides: dict[str, Any] | None, root: str) -> dict[str, Any]:
    """`overrides` with DATA_ROOT in the job's environment: the worker checks model paths against it, and the local
    endpoint gives an isolated job only the job role's folders of it (localaws/sandbox.py)."""
    overrides = dict(overrides or {})
    environment = [item for item in overrides.get("environment") or [] if item.get("name") != "DATA_ROOT"]
    overrides["environment"] = [*environment, {"name": "DATA_ROOT", "value": root}]
    return overrides


def _short(arn: str | None) -> str:
    """The name in a Batch ARN (`...:job-queue/airbatch-cpu` -> `airbatch-cpu`)."""
    return (arn or "?").rsplit("/", 1)[-1]


def job_line(job: dict[str, Any]) -> str:
    """One readable line for a SubmitJob answer or a job's description: name, queue, status, array size."""
    parts = [f"name {job.get('jobName', '?')}"]
    if job.get("jobQueue"):
        parts.append(f"queue {_short(job['jobQueue'])}")
    if job.get("status"):
        parts.append(f"status {job['status']}" + (f" ({job['statusReason']})" if job.get("statusReason") else ""))
    array = job.get("arrayProperties") or {}
    if array.get("size"):
        summary = ", ".join(f"{n} {s}" for s, n in (array.get("statusSummary") or {}).items() if n)
        parts.append(f"array of {array['size']}" + (f" ({summary})" if summary else ""))
    return ", ".join(parts)


def overrides_line(overrides: dict[str, Any]) -> str:
    """What container overrides set, without their values: environment values may be anything a DAG passes."""
    parts = []
    for key, value in overrides.items():
        if key == "environment":
            parts.append("environment " + ", ".join(str(item.get("name")) for item in value or []))
        elif key == "command":
            parts.append(f"command of {len(value or [])} words")
        else:
            parts.append(key)
    return "; ".join(parts) or "none"


class ReadableBatchLog:
    """The provider's Batch log calls, each raw API dict turned into one readable line.

    BatchOperator logs SubmitJob's whole answer ("AWS Batch job (...) started: {'ResponseMetadata': ...}"),
    the container overrides, TerminateJob's answer, and its hook the whole job description on success.
    These calls are rewritten here; every other call goes to the wrapped logger as it is.
    """

    def __init__(self, log, operator: "HouseBatchOperator | None" = None):
        self._wrapped, self._operator = log, operator

    def __getattr__(self, name: str):
        return getattr(self._wrapped, name)

    def rewrite(self, msg: Any, args: tuple) -> tuple[Any, tuple]:
        if msg == "AWS Batch job (%s) started: %s" and len(args) == 2 and isinstance(args[1], dict):
            job = {"jobQueue": getattr(self._operator, "job_queue", None),
                   "arrayProperties": getattr(self._operator, "array_properties", None), **args[1]}
            return "AWS Batch job %s submitted: %s", (args[0], job_line(job))
        if msg == "AWS Batch job (%s) succeeded: %s" and len(args) == 2 and isinstance(args[1], dict):
            return "AWS Batch job %s succeeded: %s", (args[0], job_line(args[1]))
        if msg == "AWS Batch job (%s) terminated: %s" and len(args) == 2:
            return "AWS Batch job %s terminated", (args[0],)
        if msg == "AWS Batch job - container overrides: %s" and len(args) == 1 and isinstance(args[0], dict):
            return "AWS Batch job - container overrides: %s", (overrides_line(args[0]),)
        if msg == "AWS Batch job - array properties: %s" and len(args) == 1 and isinstance(args[0], dict):
            return "AWS Batch job - array of %s children", (args[0].get("size"),)
        if isinstance(msg, dict) and "ResponseMetadata" in msg:  # the hook's terminate_job logs the answer alone
            return "AWS Batch answered (request %s)", ((msg["ResponseMetadata"] or {}).get("RequestId", "?"),)
        return msg, args

    def info(self, msg: Any, *args: Any, **kwargs: Any) -> None:
        msg, args = self.rewrite(msg, args)
        self._wrapped.info(msg, *args, **kwargs)


def on_other_endpoint(operator) -> bool:
    """Whether the operator's connection sends Batch calls to an endpoint of its own (the local endpoint) rather
    than AWS's: the AWS console would not know its jobs."""
    return operator.hook.on_other_endpoint()


class JobPageOnEndpoint:
    """A provider Batch link that, on an endpoint other than AWS's, opens the run view's page of the task's job
    (status, attempts, log tail through that endpoint) instead of the AWS console, which would not know the job.
    On AWS it is the provider's link. Airflow works a link out when the task ends and keeps it in an XCom."""

    anchor = ""

    def get_link(self, operator, *, ti_key) -> str:
        try:
            if not on_other_endpoint(operator):
                return super().get_link(operator, ti_key=ti_key)
            from airflow.providers.common.compat.sdk import XCom

            from operators.kit.runview import SUBMITTED_JOB_KEY, job_page_path

            submitted = XCom.get_value(key=SUBMITTED_JOB_KEY, ti_key=ti_key) or {}
            job_id = submitted.get("job_id") if isinstance(submitted, dict) else None
            return job_page_path(ti_key.dag_id, ti_key.run_id, str(job_id)) + self.anchor if job_id else ""
        except Exception:  # noqa: BLE001 - a link must never change a task's outcome
            return ""


class JobDetailsLink(JobPageOnEndpoint, BatchJobDetailsLink):
    pass


class JobDefinitionLink(JobPageOnEndpoint, BatchJobDefinitionLink):
    anchor = "#job"


class JobQueueLink(JobPageOnEndpoint, BatchJobQueueLink):
    anchor = "#job"


class JobLogLink(JobPageOnEndpoint, CloudWatchEventsLink):
    anchor = "#log"


class ReadableBatchClientHook(HouseBatchHook):
    """The kit's Batch hook, whose provider's `check_job_success` logs a job's whole description: one line here."""

    @property
    def log(self):
        wrapped = super().log
        return wrapped if isinstance(wrapped, ReadableBatchLog) else ReadableBatchLog(wrapped)


class HouseBatchOperator(BatchOperator):
    """BatchOperator that waits at a steady pace, shows array progress, and explains failures.

    The provider's sync wait sleeps 1-10 s three times before its first poll and then backs off to
    minutes; here the pause starts at FIRST_POLL_S and grows to `poll_interval`, so a short job's end is
    seen at once and a long one's view stays fresh at one DescribeJobs call per poll.
    On failure the task log shows, for the first failed children, their status reason, exit code
    and the tail of their CloudWatch log, so nobody has to open the Batch console to triage.

    No field is a Jinja template. The values that reach a Batch job (name, queue, definition,
    parameters, overrides) are built by an upstream task from run params and passed as they are:
    rendering them would let a param such as "{{ conn.aws_default.password }}" read secrets into
    files and job descriptions. `execution_timeout` defaults to DEFAULT_EXECUTION_TIMEOUT; when it
    fires, Airflow calls `on_kill`, which terminates the job.
    """

    template_fields: Sequence[str] = ()
    aws_hook_class = ReadableBatchClientHook
    # The provider's four links, each opening the run view's job page on an endpoint other than AWS's.
    operator_extra_links = (JobDetailsLink(), JobDefinitionLink(), JobQueueLink(), JobLogLink())

    def __init__(
        self,
        *,
        poll_interval: float = 10,
        aws_conn_id: str | None = "aws_default",  # local endpoint or AWS, chosen by the connection
        awslogs_enabled: bool = True,  # job output belongs in the task log
        execution_timeout: timedelta | None = None,
        **kwargs: Any,
    ):
        super().__init__(poll_interval=poll_interval, aws_conn_id=aws_conn_id, awslogs_enabled=awslogs_enabled,
                         execution_timeout=execution_timeout or DEFAULT_EXECUTION_TIMEOUT, **kwargs)

    def submit_job(self, context) -> None:
        from operators.kit.engine import data_root

        self.container_overrides = with_data_root(self.container_overrides, data_root())
        super().submit_job(context)

    @property
    def log(self):
        # One readable line instead of the provider's raw API dicts (ReadableBatchLog).
        wrapped = super().log
        return wrapped if isinstance(wrapped, ReadableBatchLog) else ReadableBatchLog(wrapped, self)


    def monitor_job(self, context) -> None:
        if not self.job_id:
            raise ValueError("AWS Batch job - job_id was not found")
        self._persist_links(context)
        job = self.wait_until_ended(self.job_id, deadline=time.time() + self.execution_timeout.total_seconds())
        self._persist_cloudwatch_link(context)
        if job["status"] == FAILED:
            self.explain_failure(job)
            raise AirflowException(f"AWS Batch job {self.job_id} FAILED: {job.get('statusReason', 'no reason given')}")
        if not job.get("arrayProperties", {}).get("size"):
            self.log_tail(job, label="job")
        self.log.info("AWS Batch job %s SUCCEEDED", self.job_id)

    def describe(self, job_id: str) -> dict[str, Any]:
        job = self.hook.describe_job(job_id)
        if job is None:
            raise AirflowException(f"AWS Batch job {job_id} not found")
        return job

    def wait_until_ended(self, job_id: str, deadline: float, terminate_at_deadline: bool = True) -> dict[str, Any]:
        """Poll until the job SUCCEEDED or FAILED; at `deadline` (epoch s) terminate it and raise AirflowTaskTimeout."""
        last_progress = None
        pause = FIRST_POLL_S
        while True:
            job = self.describe(job_id)
            progress = self.progress_line(job)
            if progress != last_progress:
                self.log.info("AWS Batch job %s: %s", job_id, progress)
                last_progress = progress
            if job["status"] in ENDED:
                return job
            self.on_poll(job)
            if time.time() >= deadline:
                if terminate_at_deadline:
                    self.log.error("Timeout: terminating AWS Batch job %s (%s)", job_id, job["status"])
                    self.hook.terminate(job_id, reason=SHARD_TIMEOUT_REASON)
                raise AirflowTaskTimeout(f"AWS Batch job {job_id} was still {job['status']} at the task's timeout"
                                         + ("; it was terminated" if terminate_at_deadline else ""))
            time.sleep(max(0.0, min(pause, self.poll_interval, deadline - time.time())))
            pause = next_poll_pause(pause, self.poll_interval)

    progress_line = staticmethod(progress_line)

    def on_poll(self, job: dict[str, Any]) -> None:
        """Called with each description of an active job while waiting; subclasses watch it here."""

    def explain_failure(self, job: dict[str, Any]) -> None:
        """Batch's reason and each failed child's log tail; the children's own error lines are the log's errors."""
        self.log.warning("AWS Batch job %s FAILED: %s", job["jobId"], job.get("statusReason", "no reason given"))
        if not job.get("arrayProperties", {}).get("size"):
            self.log_tail(job, label="job")
            return
        failed = self.hook.failed_children(job["jobId"])
        self.log.warning("%d array children FAILED; showing %d", len(failed), min(len(failed), FAILED_CHILDREN_SHOWN))
        for summary in failed[:FAILED_CHILDREN_SHOWN]:
            self.log_tail(self.describe(summary["jobId"]), label=f"child {summary['jobId']}")

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
        for line in self.hook.log_tail(stream, LOG_TAIL_LINES) or []:
            (self.log.error if " ERROR " in line else self.log.info)("%s | %s", label, line)


#: task_state_store key holding the submitted job of the current shard (survives retries and worker deaths).
STATE_KEY = "batch_job"
#: Names each mapped instance. A template the project writes: `task.shard.label` is built by
#: `plan_shards` from batch ids, and a rendered value is never rendered again.
SHARD_LABEL = "{{ task.shard.label }}"
#: Failure classes a retry can fix; a shard whose failed batches are all of other classes fails without retry.
RETRYABLE_CLASSES = ("transient", "lost", "not_run")
#: How many failed children's logs are read for their own error lines.
CHILD_LOGS_READ = 5
#: SubmitJob refusals that mean "slow down" (AWS Batch answers TooManyRequestsException, or a
#: ClientException saying "Too Many Requests"): retried with backoff, up to SUBMIT_ATTEMPTS calls.
THROTTLING_CODES = ("TooManyRequestsException", "ThrottlingException", "Throttling")
THROTTLING_WORDS = ("too many requests", "rate exceeded", "throttl")
SUBMIT_ATTEMPTS = 8
SUBMIT_BACKOFF_MAX_S = 60.0


def is_throttling(exc: BaseException | None) -> bool:
    """True when `exc` (or the error it wraps: the provider re-raises as AirflowException) is a throttled call."""
    from botocore.exceptions import ClientError

    while exc is not None:
        if isinstance(exc, ClientError):
            error = exc.response.get("Error", {})
            code, message = str(error.get("Code", "")), str(error.get("Message", "")).lower()
            return code in THROTTLING_CODES or (code == "ClientException" and any(w in message for w in THROTTLING_WORDS))
        exc = exc.__cause__ or exc.__context__
    return False


def fallback_queue(queue: str) -> str | None:
    """The queue the provisioning spec names as `queue`'s fallback for capacity shortages, if any."""
    from operators.kit.batch_resources import load_spec

    return (load_spec()["job_queues"].get(queue) or {}).get("fallback")


class UnitsOfWorkOperator(HouseBatchOperator):
    """Runs one shard of a unit-of-work pipeline as ONE AWS Batch array job, resuming what is not done.

    `shard` is a descriptor from `operators.kit.engine.plan_shards` (mapped with `.expand_kwargs()`,
    together with `job_queue` and `job_definition`; pass `map_index_template=SHARD_LABEL` to
    `.partial()` to name each instance "shard 3: batches ..."). On every try it

    - reattaches to the job an earlier try submitted if that job is still active (the job id is
      kept in Airflow's `task_state_store`), so a dead Airflow worker never causes a duplicate;
    - otherwise lists the shard's batches without a valid done-marker (cache key = batch content
      hash + workload version + parameters). Batches that another run's active job is computing
      (its claim under `<output root>/_claims/`) are waited for, not computed again; the rest go
      into a worklist and one array job, claimed while it runs (nothing is submitted when every
      batch is cached);
    - waits (in the triggerer when `deferrable`), terminating its job if the task is killed or
      the shard's `timeout_s` (its execution_timeout) passes;
    - reads every batch's marker and pushes a summary (also under XCom key `summary` when it fails).

    The task fails when fewer than `min_success_ratio` of the shard's batches are done: with a
    retry when some failed batch may pass on a retry (transient, lost), without one when none can
    (bad data, config, permission). A retry or a clear resumes only the failed batches. At
    or above the ratio it succeeds, and the failed batches are listed in the summary and the
    shard's results file: the dead-letter list.
    """

    # Nothing is templated: the shard descriptor carries run params (salt, fail_units, ...).
    template_fields: Sequence[str] = ()

    def __init__(self, *, shard: dict[str, Any], job_name: str = "units-of-work",
                 min_success_ratio: float | None = None, batches_per_child: int | None = None,
                 execution_timeout: timedelta | None = None, runnable_timeout_s: float | None = None,
                 **kwargs: Any):
        timeout_s = (shard or {}).get("timeout_s")
        if execution_timeout is None and timeout_s:
            execution_timeout = timedelta(seconds=float(timeout_s))
        super().__init__(job_name=job_name, execution_timeout=execution_timeout, **kwargs)
        self.shard = shard
        self.min_success_ratio = min_success_ratio
        self.batches_per_child = batches_per_child
        #: Capacity shortage: when this task's job has children RUNNABLE and none starts for this long, its
        #: unstarted children are cancelled and their batches go to the queue's fallback (None: never).
        self.runnable_timeout_s = runnable_timeout_s
        self.capacity_watch: CapacityWatch | None = None
        self.moved: dict[str, dict[str, Any]] = {}

    # --- the flow -------------------------------------------------------------------------------

    def execute(self, context):
        from operators.kit import engine

        spec = engine.ShardSpec.from_dict(self.shard)
        started = time.time()
        deadline = started + self.execution_timeout.total_seconds()
        ti = context["ti"]
        engine.check_run_owner(spec.run_root, ti.dag_id, ti.run_id, self.aws_conn_id)
        store = context.get("task_state_store")
        earlier = (store.get(STATE_KEY) if store is not None else None) or {}
        state = {"job_id": earlier.get("job_id"), "worklist": earlier.get("worklist"),
                 "job_ids": list(earlier.get("job_ids", [])), "worklists": list(earlier.get("worklists", [])),
                 "this_try": [], "waiting_for": None, "claim": None, "submitted_at": started}
        if earlier.get("job_id"):
            job = self.hook.describe_job(earlier["job_id"])
            if job is not None and job["status"] in ACTIVE:
                self.log.info("Reattaching to AWS Batch job %s (%s) submitted by an earlier try; not submitting "
                              "again", earlier["job_id"], job["status"])
                state["this_try"] = [{"job_id": earlier["job_id"], "worklist": earlier["worklist"]}]
                state["claim"] = earlier.get("claim")
                return self.wait_for(context, spec, state, earlier["job_id"], mine=True, deadline=deadline)
            self.log.info("The earlier try's AWS Batch job %s ended %s; resuming the batches without a done-marker",
                          earlier["job_id"], job["status"] if job else "(no longer known to Batch)")
        return self.advance(context, spec, state, deadline)

    def advance(self, context, spec, state: dict[str, Any], deadline: float):
        """Submit what nobody computes, wait for what another run computes, until nothing is left to try."""
        from operators.kit import engine

        batches = engine.shard_batches(spec, self.aws_conn_id)
        out = engine.location(spec.output_root, self.aws_conn_id)
        tried = self.keys_of(e["worklist"] for e in state["this_try"])
        while True:
            done = engine.done_markers(out, batches)
            todo = [b for b in batches if b["key"] not in done and b["key"] not in tried]
            if not todo:
                return self.shard_outcome(context, spec, state, batches)
            busy = self.claimed_elsewhere(out, {b["key"] for b in todo}, context["ti"])
            mine = [b for b in todo if b["key"] not in busy]
            self.log.info("%s: %d batches, %d done (cached or computed), %d to compute here, %d being computed by "
                          "another run", spec.label, len(batches), len(done), len(mine), len(todo) - len(mine))
            if mine:
                job_id = self.submit(context, spec, state, out, mine, deadline)
                if job_id:
                    return self.wait_for(context, spec, state, job_id, mine=True, deadline=deadline)
                continue  # an earlier claim took them meanwhile
            other = next((job for job in busy.values() if job), None)
            if other:
                self.log.info("Waiting for AWS Batch job %s of another run, which is computing %d of this shard's "
                              "batches; then computing only what it leaves undone", other,
                              sum(1 for job in busy.values() if job == other))
                return self.wait_for(context, spec, state, other, mine=False, deadline=deadline)
            if time.time() >= deadline:
                raise AirflowTaskTimeout(f"{spec.label}: another run's claim on {len(busy)} batches was not "
                                         "submitted before the task's timeout")
            time.sleep(self.poll_interval)  # another run is about to submit them

    def submit(self, context, spec, state: dict[str, Any], out, pending: list[dict[str, Any]],
               deadline: float | None = None) -> str | None:
        """Claim `pending`, give up those an earlier claim holds, submit one job for the rest; its job id."""
        from operators.kit import engine

        ti = context["ti"]
        run = {"dag_id": ti.dag_id, "run_id": ti.run_id, "task_id": ti.task_id, "map_index": ti.map_index,
               "try_number": ti.try_number}
        claim = engine.new_claim(out, (b["key"] for b in pending), run)
        # Two runs may claim the same batches at the same moment: the claim that comes first keeps them.
        taken = self.claimed_elsewhere(out, set(claim["keys"]), ti, before=claim)
        if taken:
            pending = [b for b in pending if b["key"] not in taken]
            self.log.info("%d batches were claimed by another run at the same moment; leaving them to it", len(taken))
            if not pending:
                out.remove(claim["uri"])
                return None
            claim["keys"] = sorted(b["key"] for b in pending)
            engine.write_claim(out, claim)
        requested = self.batches_per_child if self.batches_per_child not in (None, "", "None", 0, "0") else None
        per_child, children = engine.children_plan(len(pending), int(requested) if requested else spec.batches_per_child)
        worklist = engine.write_worklist(spec, pending, per_child, run, self.aws_conn_id)
        self.job_name = engine.batch_job_name(f"{ti.dag_id}-{ti.task_id}-shard{spec.index}")
        self.array_properties = {"size": children} if children > 1 else {}
        self.parameters = {"worklist": worklist}
        if self.retry_strategy is None:
            from operators.kit.batch_resources import load_spec

            self.retry_strategy = load_spec()["retry_strategy"]
        self.log.info("Submitting one %s for %d pending batches: %d child(ren) of up to %d batches; worklist %s",
                      "array job" if children > 1 else "job", len(pending), children, per_child, worklist)
        try:
            self.submit_with_backoff(context, state, deadline)
        except BaseException:
            out.remove(claim["uri"])
            raise
        claim["job_id"] = self.job_id
        engine.write_claim(out, claim)
        state.update(job_id=self.job_id, worklist=worklist, claim=claim["uri"], job_ids=[*state["job_ids"], self.job_id],
                     worklists=[*state["worklists"], worklist],
                     this_try=[*state["this_try"], {"job_id": self.job_id, "worklist": worklist}])
        self.save_state(context, state)
        return self.job_id

    def submit_with_backoff(self, context, state: dict[str, Any], deadline: float | None) -> None:
        """submit_job, retried with exponential backoff and jitter while Batch throttles it (BATCH_SUBMIT_BACKOFF_S
        is the first delay, default 1 s); any other error, the last attempt or the deadline raises."""
        import os
        import random

        delay = float(os.environ.get("BATCH_SUBMIT_BACKOFF_S") or 1.0)
        for attempt in range(1, SUBMIT_ATTEMPTS + 1):
            try:
                return self.submit_job(context)
            except Exception as exc:
                wait = delay * random.uniform(0.5, 1.0)
                if (not is_throttling(exc) or attempt == SUBMIT_ATTEMPTS
                        or (deadline is not None and time.time() + wait >= deadline)):
                    raise
                state["throttled_submits"] = state.get("throttled_submits", 0) + 1
                self.log.warning("SubmitJob to %s was throttled (%s); retrying in %.1f s (call %d of %d)",
                                 self.job_queue, str(exc).splitlines()[0][:200], wait, attempt, SUBMIT_ATTEMPTS)
                time.sleep(wait)
                delay = min(delay * 2, SUBMIT_BACKOFF_MAX_S)

    def on_poll(self, job: dict[str, Any]) -> None:
        """Sync mode's capacity watch of this task's own job (in deferrable mode the trigger watches, with the same
        CapacityWatch, and execute_complete makes the same failover)."""
        watch = self.capacity_watch
        if not watch or job["jobId"] != self.job_id:
            return
        shortage = watch.observe(job, time.time())
        if not shortage:
            return
        self.capacity_watch = None
        moved = self.fail_over(job, *shortage)
        if moved:
            self.moved[job["jobId"]] = moved

    def fail_over(self, job: dict[str, Any], runnable: int, waited: float) -> dict[str, Any] | None:
        """The capacity failover of both modes: cancel the job (started children finish, the rest never run) and
        return the shortage record that sends its batches without a done-marker to the queue's fallback once the
        job has ended (after_wait). None, and the job waits on, when the queue has no fallback."""
        queue = queue_name(job.get("jobQueue")) or self.job_queue
        fallback = fallback_queue(queue)
        if not fallback:
            self.log.warning("AWS Batch job %s: %d children RUNNABLE for %.0f s on %s, which has no fallback queue in "
                             "the provisioning spec; waiting on", job["jobId"], runnable, waited, queue)
            return None
        reason = (f"capacity shortage: {runnable} children RUNNABLE for {waited:.0f} s on {queue}; "
                  f"unstarted work moved to {fallback}")
        # One line a person (and make rehearsal) finds in the task log, in both modes.
        self.log.warning("capacity failover: AWS Batch job %s: %s", job["jobId"], reason)
        self.hook.cancel(job["jobId"], reason)
        return {"job_id": job["jobId"], "queue": queue, "fallback": fallback, "runnable": runnable,
                "waited_s": round(waited, 3), "at": time.time(), "reason": reason}

    @staticmethod
    def save_state(context, state: dict[str, Any]) -> None:
        store = context.get("task_state_store")
        if store is not None:
            store.set(STATE_KEY, state)

    def wait_for(self, context, spec, state: dict[str, Any], job_id: str, *, mine: bool, deadline: float,
                 watch: bool = True):
        """Wait for a job (this task's own, or another run's), then go on with `advance`.

        With `runnable_timeout_s`, the wait of this task's own job watches for a capacity shortage (`watch`
        False: not again, the job is being moved): in the task in sync mode, in the trigger in deferrable mode.
        """
        state["waiting_for"] = {"job_id": job_id, "mine": mine}
        self.save_state(context, state)
        if mine:
            self.job_id = job_id
        runnable_timeout_s = (float(self.runnable_timeout_s)
                              if mine and watch and self.runnable_timeout_s not in (None, "", "None") else None)
        self.capacity_watch = CapacityWatch(runnable_timeout_s) if runnable_timeout_s else None
        if self.deferrable:
            from operators.kit.triggers import BatchJobWaitTrigger

            self.defer(trigger=BatchJobWaitTrigger(job_id=job_id, aws_conn_id=self.aws_conn_id,
                                                   region_name=self.region_name, poll_interval=self.poll_interval,
                                                   terminate_on_kill=mine, deadline=deadline,
                                                   runnable_timeout_s=runnable_timeout_s),
                       method_name="execute_complete", kwargs={"state": state, "deadline": deadline},
                       # the trigger fires at the deadline itself; this is the scheduler's backstop
                       timeout=timedelta(seconds=max(1.0, deadline - time.time()) + 10 * self.poll_interval + 60))
        job = self.wait_until_ended(job_id, deadline, terminate_at_deadline=mine)
        return self.after_wait(context, spec, state, job, deadline)

    def execute_complete(self, context, event: dict[str, Any] | None = None, state: dict[str, Any] | None = None,
                         deadline: float | None = None, **_: Any):
        from operators.kit import engine

        spec = engine.ShardSpec.from_dict(self.shard)
        if state is None:  # the triggerer path keeps next_kwargs; the state store has it either way
            state = context["task_state_store"].get(STATE_KEY)
        waiting = state.get("waiting_for") or {"job_id": state["job_id"], "mine": True}
        if (event or {}).get("status") == TIMEOUT:
            raise AirflowTaskTimeout(f"{spec.label}: {event['reason']}"
                                     + ("; the job was terminated" if waiting["mine"] else ""))
        deadline = deadline or time.time() + self.execution_timeout.total_seconds()
        job = self.hook.describe_job(waiting["job_id"]) or {
            "jobId": waiting["job_id"], "status": FAILED, "statusReason": (event or {}).get("reason", "job not found")}
        if (event or {}).get("status") == CAPACITY_WAIT and job["status"] not in ENDED:
            # The trigger saw the shortage; the failover is sync mode's. The moved record travels in the state
            # (this operator object does not outlive the deferral), and the wait goes on, without the watch, until
            # the cancelled job has ended; then after_wait submits the rest to the fallback queue.
            moved = self.fail_over(job, int(event["runnable"]), float(event["waited_s"]))
            if moved:
                state["moving"] = moved
            return self.wait_for(context, spec, state, job["jobId"], mine=waiting["mine"], deadline=deadline,
                                 watch=False)
        return self.after_wait(context, spec, state, job, deadline)

    def resume_execution(self, next_method: str, next_kwargs: dict[str, Any] | None, context):
        """The scheduler's trigger timeout resumes the task to fail it without calling on_kill: terminate first."""
        if next_method == "__fail__":
            state = (next_kwargs or {}).get("state") or (context.get("task_state_store").get(STATE_KEY)
                                                         if context.get("task_state_store") is not None else None)
            waiting = (state or {}).get("waiting_for") or {}
            if waiting.get("mine") and waiting.get("job_id"):
                self.job_id = waiting["job_id"]
                self.log.error("Deferred wait failed or timed out: terminating AWS Batch job %s", self.job_id)
                self.on_kill()
        return super().resume_execution(next_method, next_kwargs, context)

    def after_wait(self, context, spec, state: dict[str, Any], job: dict[str, Any], deadline: float):
        from operators.kit import engine

        waiting = state.get("waiting_for") or {"mine": True}
        state["waiting_for"] = None
        moved = self.moved.pop(job["jobId"], None)
        if (state.get("moving") or {}).get("job_id") == job["jobId"]:  # moved by a deferred wait's failover
            moved = state.pop("moving")
        if moved:
            # Its unstarted batches are tried again, on the fallback queue; the done ones are not.
            state["this_try"] = [e for e in state["this_try"] if e["job_id"] != job["jobId"]]
            state["shortages"] = [*state.get("shortages", []), moved]
            self.job_queue = moved["fallback"]
        if waiting["mine"]:
            if job["status"] == FAILED:
                self.explain_failure(job)
            if state.get("claim"):
                engine.location(state["claim"], self.aws_conn_id).remove(state["claim"])
                state["claim"] = None
        else:
            self.log.info("AWS Batch job %s of another run ended %s; checking what it left undone", job["jobId"],
                          job["status"])
        return self.advance(context, spec, state, deadline)

    def shard_outcome(self, context, spec, state: dict[str, Any], batches: list[dict[str, Any]]):
        """This shard's result once nothing is left to try: its batches' outcome, with the reasons of this try's
        failed jobs, written and returned by `finish`."""
        from operators.kit import engine

        reasons: dict[str, tuple[str, str]] = {}
        for entry in state["this_try"]:
            job = self.hook.describe_job(entry["job_id"])
            if job is not None and job["status"] == FAILED:
                worklist = engine.location(entry["worklist"], self.aws_conn_id).read_json()
                reasons.update(self.child_reasons(job, worklist))
        result = engine.outcome(spec, batches, self.keys_of(state["worklists"]),
                                [e["job_id"] for e in state["this_try"]], reasons, self.aws_conn_id)
        return self.finish(context, spec, result, list(state["job_ids"]), state["submitted_at"],
                           shortages=state.get("shortages", []), throttled=state.get("throttled_submits", 0))

    def finish(self, context, spec, result, job_ids: list[str], started: float,
               shortages: list[dict[str, Any]] = (), throttled: int = 0) -> dict[str, Any]:
        from operators.kit import engine

        root = engine.location(spec.run_root, self.aws_conn_id)
        results_uri = root.join("results", f"shard-{spec.index}.json")
        root.write_json(results_uri, result.results())
        summary = result.summary(job_ids, time.time() - started, results_uri)
        summary.update(capacity_shortages=list(shortages), throttled_submits=throttled, cost=self.own_cost(job_ids))
        self.log.info("%s: %d batches: %d succeeded, %d cached, %d failed (%.1f%% done); results %s", spec.label,
                      summary["batches"], summary["succeeded"], summary["cached"], summary["failed"],
                      100 * result.success_ratio, results_uri)
        for kind, error in summary["first_errors"].items():
            self.log.warning("first %s failure: %s", kind, error)
        ratio = float(self.min_success_ratio if self.min_success_ratio not in (None, "", "None")
                      else spec.min_success_ratio)
        if result.success_ratio < ratio:
            context["ti"].xcom_push(key="summary", value=summary)
            message = (f"{spec.label}: {summary['failed']} of {summary['batches']} batches failed "
                       f"({100 * result.success_ratio:.1f}% done, min_success_ratio {ratio}); first errors: "
                       f"{summary['first_errors']}.")
            classes = set(summary["failures_by_class"])
            if "config" in classes:  # the worker could not run at all: its own "cannot run" line leads
                message = f"{spec.label}: {summary['first_errors']['config']}. {message.removeprefix(spec.label + ': ')}"
            if not classes & set(RETRYABLE_CLASSES):
                raise AirflowFailException(
                    f"{message} Not retried: every failed batch failed for a reason a retry cannot fix "
                    f"({', '.join(sorted(classes))}). Fix the data, the parameters or the store's permissions, then "
                    "clear this task: it resumes only the failed batches.")
            raise AirflowException(f"{message} A retry or a clear of this task resumes only the failed batches.")
        if summary["failed"]:
            self.log.warning("%d failed batches are dead-lettered (min_success_ratio %s): %s", summary["failed"],
                             ratio, summary["failed_batches"])
        return summary

    # --- Batch helpers ----------------------------------------------------------------------------

    def keys_of(self, worklist_uris) -> set[str]:
        """The batches of these worklists (this task instance's jobs)."""
        from operators.kit import engine

        keys: set[str] = set()
        for uri in worklist_uris:
            keys |= {item["key"] for item in engine.location(uri, self.aws_conn_id).read_json()["items"]}
        return keys

    def claimed_elsewhere(self, out, keys: set[str], ti, before: dict[str, Any] | None = None) -> dict[str, str | None]:
        """Of `keys`, those another task's in-flight claim holds: key -> its job id (None: not submitted yet).

        In flight: its job is active, or it has no job yet and is younger than CLAIM_SUBMIT_GRACE_S.
        Claims of ended or abandoned jobs are removed. With `before`, only claims that come before it count
        (engine.claims_before: in ticket order, once none is still choosing its ticket).
        """
        from operators.kit import engine

        me = (ti.dag_id, ti.run_id, ti.task_id, ti.map_index)

        def mine(claim: dict[str, Any]) -> bool:
            return tuple((claim.get("run") or {}).get(k) for k in ("dag_id", "run_id", "task_id", "map_index")) == me

        if before is None:
            claims = [c for c in engine.read_claims(out) if not mine(c)]
        else:
            claims = engine.claims_before(out, before, keys, ignore=mine)
        statuses = self.hook.job_statuses([c["job_id"] for c in claims if c.get("job_id")])
        busy: dict[str, str | None] = {}
        now = time.time_ns()
        for claim in claims:
            if claim.get("job_id"):
                live = statuses.get(claim["job_id"]) in ACTIVE
            else:
                live = now - int(claim["created_ns"]) < engine.CLAIM_SUBMIT_GRACE_S * 1e9
            if not live:
                out.remove(claim["uri"])
                continue
            for key in keys.intersection(claim["keys"]):
                busy.setdefault(key, claim.get("job_id"))
        return busy

    def own_cost(self, job_ids: list[str]) -> dict[str, Any] | None:
        """This shard's jobs costed now that they have ended, with this task's Batch client (collect only adds
        the shards up); None when they cannot be described now, and collect describes them itself."""
        from operators.kit import cost

        try:
            return cost.shard_cost(job_ids, self.hook.describe_jobs)
        except Exception as error:  # noqa: BLE001 - a cost must never change a shard's outcome
            self.log.warning("Could not cost this shard's jobs now (%s); collect will describe them", error)
            return None

    def child_reasons(self, job: dict[str, Any], worklist: dict[str, Any]) -> dict[str, tuple[str, str]]:
        """(failure class, error) for each batch whose child FAILED, by cache key.

        The class follows the child's exit code (EXIT_CLASSES; "lost" for a kill or a lost host).
        The error is the child's own, from the failure lines in its log when it could not write
        `_FAILED.json` (read for the first CHILD_LOGS_READ children), else Batch's reason.
        """
        from batch_worker.cache import parse_failure_line

        items, per_child = worklist["items"], int(worklist["batches_per_child"])
        if job.get("arrayProperties", {}).get("size"):
            children = [(c.get("arrayProperties", {}).get("index", 0), c)
                        for c in self.hook.failed_children(job["jobId"])]
        else:
            children = [(0, job)]
        reasons: dict[str, tuple[str, str]] = {}
        for number, (index, child) in enumerate(children):
            exit_code = child.get("container", {}).get("exitCode")
            kind = EXIT_CLASSES.get(exit_code, "lost")
            text = f"child {index}: {child.get('statusReason', 'FAILED')}" + (
                f" (exit code {exit_code})" if exit_code is not None else "")
            reported: dict[Any, dict[str, Any]] = {}
            if number < CHILD_LOGS_READ and kind != "lost":
                full = child if "attempts" in child else self.describe(child["jobId"])
                attempts = full.get("attempts") or []
                stream = (attempts[-1].get("container", {}).get("logStreamName") if attempts
                          else full.get("container", {}).get("logStreamName"))
                for line in (self.hook.log_tail(stream, LOG_TAIL_LINES) or []) if stream else []:
                    record = parse_failure_line(line)
                    if record:
                        reported[record.get("key")] = record
            fallback = next(iter(reported.values()), None)
            for item in items[index * per_child:(index + 1) * per_child]:
                record = reported.get(item["key"]) or fallback
                reasons[item["key"]] = ((record["class"], f"child {index}: {record['error']}") if record
                                        else (kind, text))
        return reasons

    def on_kill(self) -> None:
        """Terminate the shard's job (every array child) when the task is failed, cleared or timed out while it waits."""
        if self.job_id:
            super().on_kill()


def run_shards(shards, *, task_id: str = "run_shard", poll_interval: float = 2, **kwargs: Any):
    """The mapped shard task of a pipeline: `shards` from `engine.plan_shards` (descriptor, queue, job definition).

    A retry resumes only the batches that are not done; Spot and host losses never reach it
    (Batch's retry strategy takes them), and failures a retry cannot fix fail without one.
    SHARD_RETRY_DELAY_S sets the delay before that retry (default 30 s). Each shard's
    execution_timeout comes from its descriptor (`shard_timeout_minutes` of the run).
    """
    import os

    return UnitsOfWorkOperator.partial(
        task_id=task_id,
        poll_interval=poll_interval,
        map_index_template=SHARD_LABEL,
        retries=kwargs.pop("retries", 1),
        retry_delay=timedelta(seconds=float(os.environ.get("SHARD_RETRY_DELAY_S", "30"))),
        **kwargs,
    ).expand_kwargs(shards)
