"""AWS Batch jobs that really run, as local processes, behind moto's Batch API.

moto 5.2.5 runs a Batch job in Docker (no engine here) or, in `batch_simple` mode, not at all.
`ProcessJob` replaces moto's `Job` (moto builds jobs through the module global
`moto.batch.models.Job`, so the swap takes effect for every submit) and hands each job to one
`Dispatcher` that behaves like a Batch scheduler on one host:

* statuses SUBMITTED -> PENDING -> RUNNABLE -> STARTING -> RUNNING -> SUCCEEDED | FAILED;
* capacity: a job leaves RUNNABLE only while its compute environment has free vCPUs
  (`unmanagedvCpus` or `computeResources.maxvCpus`, default: this machine's cores);
* array jobs: children run, the parent aggregates them (`arrayProperties.statusSummary`) and ends
  FAILED if any child failed, SUCCEEDED when all succeeded;
* `retryStrategy` with `evaluateOnExit` (job definition or submit_job), every attempt recorded;
* `timeout.attemptDurationSeconds`; terminate/cancel reach array children; the whole process
  group is killed;
* each attempt's stdout and stderr go to CloudWatch Logs `/aws/batch/job`;
* `dependsOn` by job id (an array child of a parent, or a whole job).

A process killed from outside (SIGKILL by anyone but the dispatcher) is reported as a lost host,
the way AWS reports a reclaimed Spot instance, so retry rules on "Host EC2*" can be exercised.

Capacity conditions, set through the (signed, loopback-only) Batch API like on AWS:

* a compute environment whose `state` is DISABLED places nothing: its jobs stay RUNNABLE, as
  jobs do on AWS when no instance can be had;
* tag `localaws:throttle_submits` = N on a job queue: its next N SubmitJob calls are refused
  with ClientException "Too Many Requests" (the tag counts down);
* tag `localaws:lose_hosts` = N on a compute environment: its next N attempts lose their host
  (killed at start, reported "Host EC2 (...) terminated.", retried by the retry strategy).

The job definition's `image` is not used: the command runs with this Python environment.
"""
from __future__ import annotations

import copy
import fnmatch
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import deque
from datetime import datetime
from typing import Any

import moto.batch.exceptions as moto_batch_exceptions
import moto.batch.models as moto_batch
import moto.batch.responses as moto_batch_responses
from moto.core.base_backend import BaseBackend

logger = logging.getLogger(__name__)

LOG_GROUP = "/aws/batch/job"
EXITED_REASON = "Essential container in task exited"
TIMEOUT_REASON = "Job attempt duration exceeded timeout"
LOST_HOST_REASON = "Host EC2 (instance i-0localhost) terminated."
DEPENDENCY_FAILED_REASON = "Dependent Job failed"
TERMINATION_GRACE_SECONDS = 2.0
ENDED = ("SUCCEEDED", "FAILED")

_submit_context = threading.local()


def _now_ms() -> int:
    return int(time.time() * 1000)


def _rule_matches(pattern: str | None, value: str | None) -> bool:
    if pattern is None:
        return True
    return fnmatch.fnmatchcase(value or "", pattern)


def retry_decision(retry_strategy: dict | None, attempt_number: int, attempt: dict) -> bool:
    """True when Batch would run another attempt after `attempt` (the `attempt_number`-th).

    AWS semantics: `attempts` (1..10) caps the total; `evaluateOnExit` rules are tried in order and
    the first whose every given glob matches decides RETRY or EXIT; no rule matching means retry.
    """
    strategy = retry_strategy or {}
    if attempt_number >= int(strategy.get("attempts", 1) or 1):
        return False
    container = attempt.get("container", {})
    for rule in strategy.get("evaluateOnExit") or []:
        exit_code = container.get("exitCode")
        if (
            _rule_matches(rule.get("onStatusReason"), attempt.get("statusReason"))
            and _rule_matches(rule.get("onReason"), container.get("reason"))
            and _rule_matches(rule.get("onExitCode"), None if exit_code is None else str(exit_code))
        ):
            return rule.get("action", "").upper() == "RETRY"
    return True


class ProcessJob(moto_batch.Job):
    """A moto Batch job whose container is a local process group."""

    def __init__(self, *args: Any, **kwargs: Any):
        # moto's _get_container_property("environment") appends to the override list in place, and
        # the same override dict is shared by every child of an array job.
        if kwargs.get("container_overrides"):
            kwargs["container_overrides"] = copy.deepcopy(kwargs["container_overrides"])
        super().__init__(*args, **kwargs)
        self._state = "SUBMITTED"
        self.retry_strategy = getattr(_submit_context, "retry_strategy", None) or self.job_definition.retry_strategy
        self.process: subprocess.Popen | None = None
        self.attempt_deadline: float | None = None
        self.stop_requested_reason: str | None = None
        self.killed_by_dispatcher = False
        self.array_index: int | None = self.array_properties.get("index")
        self.parent: ProcessJob | None = None
        if self.array_index is not None:
            self.parent = self.all_jobs.get(self.job_id.rsplit(":", 1)[0])
        self.children_ended = 0
        self.children_failed: list[ProcessJob] = []
        self.children_started = 0

    # moto's ManagedState advances statuses on reads, and moto's describe() writes SUCCEEDED from child
    # counts; here the dispatcher alone moves statuses (set_status, under its lock), so writes through
    # the attribute are ignored.
    @property
    def status(self) -> str:  # type: ignore[override]
        return self._state

    @status.setter
    def status(self, value: str) -> None:
        pass

    def set_status(self, value: str) -> None:
        self._state = value

    @property
    def is_parent(self) -> bool:
        return bool(self._child_jobs)

    def start(self) -> None:
        """moto calls this to run the job in a thread; the dispatcher schedules it instead."""
        dispatcher().submit(self)

    def run(self) -> None:  # pragma: no cover - the thread is never started
        raise RuntimeError("ProcessJob runs through the dispatcher")

    # -- what the API shows -------------------------------------------------------------------

    def describe_short(self) -> dict[str, Any]:
        result = super().describe_short()
        if self.array_index is not None:
            result["arrayProperties"] = {"index": self.array_index}
        elif self.is_parent:
            result["arrayProperties"] = {"size": len(self._child_jobs or [])}
        if self.job_stopped and self.exit_code is not None:
            result["container"] = {"exitCode": self.exit_code}
        return result

    def describe(self) -> dict[str, Any]:
        children = self._child_jobs
        result = super().describe()
        result["status"] = self.status
        if self.job_stopped_reason:
            result["statusReason"] = self.job_stopped_reason
        if self.retry_strategy:
            result["retryStrategy"] = self.retry_strategy
        if children:
            summary = dict.fromkeys(moto_batch.JobStatus.job_statuses(), 0)
            for child in children:
                summary[child.status] += 1
            result["arrayProperties"] = {"statusSummary": summary, "size": len(children)}
            first = (self.children_failed or children)[0]
            if first.log_stream_name and "container" in result:
                result["container"]["logStreamName"] = first.log_stream_name
        elif self.array_index is not None:
            result["arrayProperties"] = {"index": self.array_index}
        if "container" in result and self.job_stopped:
            result["container"]["exitCode"] = self.exit_code
            if self.latest_attempt:
                reason = self.latest_attempt["container"].get("reason")
                if reason:
                    result["container"]["reason"] = reason
        return result

    # -- what the process gets ----------------------------------------------------------------

    def compute_environment(self) -> moto_batch.ComputeEnvironment | None:
        return self.job_queue.environments[0] if self.job_queue.environments else None

    def _get_container_property(self, p: str, default: Any) -> Any:
        if p != "environment":
            return super()._get_container_property(p, default)
        # moto's version appends to the override list on every call; merge into new lists instead.
        merged = {item["name"]: item["value"] for item in self.job_definition.container_properties.get(p, [])}
        merged.update({item["name"]: item["value"] for item in self.container_overrides.get(p, [])})
        merged["AWS_BATCH_JOB_ID"] = self.job_id
        return [{"name": name, "value": value} for name, value in merged.items()]

    def vcpus(self) -> float:
        for requirement in self.container_overrides.get("resourceRequirements") or []:
            if requirement.get("type") == "VCPU":
                return float(requirement["value"])
        return float(self._get_container_property("vcpus", 1) or 1)

    def process_command(self) -> list[str]:
        command = self._get_container_property("command", [])
        return [str(part) for part in self._add_parameters_to_command(command)]

    def process_environment(self, attempt_number: int) -> dict[str, str]:
        """Built from nothing, as a container's: nothing of the endpoint's own environment leaks in."""
        env = dict(dispatcher().job_base_environment)
        for item in self._get_container_property("environment", []):
            env[item["name"]] = str(item["value"])
        env["AWS_BATCH_JOB_ID"] = self.job_id
        env["AWS_BATCH_JOB_ATTEMPT"] = str(attempt_number)
        env["AWS_BATCH_JQ_NAME"] = self.job_queue.name
        ce = self.compute_environment()
        env["AWS_BATCH_CE_NAME"] = ce.name if ce else ""
        if self.array_index is not None:
            env["AWS_BATCH_JOB_ARRAY_INDEX"] = str(self.array_index)
            env["AWS_BATCH_JOB_ARRAY_SIZE"] = str(len(self.parent._child_jobs or [])) if self.parent else ""
        return env

    # -- termination ------------------------------------------------------------------------

    def terminate(self, reason: str) -> None:
        self._stop(reason, only_before_start=False)

    def cancel(self, reason: str) -> None:
        self._stop(reason, only_before_start=True)

    def _stop(self, reason: str, only_before_start: bool) -> None:
        with dispatcher().lock:
            for job in self._child_jobs if self.is_parent else [self]:
                dispatcher().request_stop(job, reason, only_before_start=only_before_start)


class Dispatcher:
    """One scheduler thread for every ProcessJob of this endpoint process."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.wakeup = threading.Condition(self.lock)
        self.pending: list[ProcessJob] = []  # waiting for dependencies
        self.runnable: dict[str, deque[ProcessJob]] = {}  # per compute environment, in submit order
        self.running: set[ProcessJob] = set()
        self.used_vcpus: dict[str, float] = {}
        self.job_base_environment: dict[str, str] = {}
        self.default_vcpus = float(os.cpu_count() or 1)
        self._thread = threading.Thread(target=self._loop, name="localaws-batch-dispatcher", daemon=True)
        self._thread.start()

    # -- requests from the API threads ---------------------------------------------------------

    def submit(self, job: ProcessJob) -> None:
        with self.lock:
            if job.parent is not None and job.parent.status == "SUBMITTED":
                job.parent.set_status("PENDING")
            if job.depends_on:
                job.set_status("PENDING")
                self.pending.append(job)
            else:
                self._make_runnable(job)
            self.wakeup.notify()

    def request_stop(self, job: ProcessJob, reason: str, only_before_start: bool) -> None:
        with self.lock:
            if job.status in ENDED:
                return
            if job.status in ("SUBMITTED", "PENDING", "RUNNABLE"):
                self._finish(job, success=False, reason=reason)
                return
            if only_before_start:
                return
            job.stop_requested_reason = reason
            self._kill(job)

    # -- the scheduler ------------------------------------------------------------------------

    def capacity(self, ce: moto_batch.ComputeEnvironment | None) -> float:
        if ce is None:
            return self.default_vcpus
        unmanaged = getattr(ce, "unmanaged_vcpus", None)
        if unmanaged:
            return float(unmanaged)
        max_vcpus = (ce.compute_resources or {}).get("maxvCpus")
        return float(max_vcpus) if max_vcpus else self.default_vcpus

    def _loop(self) -> None:
        while True:
            with self.lock:
                self.wakeup.wait(timeout=0.1)
                try:
                    self._check_deadlines()
                    self._schedule()
                except Exception:  # the dispatcher must outlive any one job's error
                    logger.exception("dispatcher pass failed")

    def _check_deadlines(self) -> None:
        now = time.monotonic()
        for job in list(self.running):
            if job.attempt_deadline is not None and now > job.attempt_deadline and not job.stop_requested_reason:
                job.stop_requested_reason = TIMEOUT_REASON
                self._kill(job)

    def _schedule(self) -> None:
        still_pending: list[ProcessJob] = []
        for job in self.pending:
            if job.status in ENDED:
                continue
            verdict = self._dependencies(job)
            if verdict == "failed":
                self._finish(job, success=False, reason=DEPENDENCY_FAILED_REASON)
            elif verdict == "waiting":
                still_pending.append(job)
            else:
                self._make_runnable(job)
        self.pending = still_pending
        for ce_key, queue in self.runnable.items():
            while queue:
                job = queue[0]
                if job.status in ENDED:
                    queue.popleft()
                    continue
                if getattr(job.compute_environment(), "state", "ENABLED") == "DISABLED":
                    break  # no capacity: the queue's jobs stay RUNNABLE
                need = job.vcpus()
                used = self.used_vcpus.get(ce_key, 0.0)
                if used > 0 and used + need > self.capacity(job.compute_environment()):
                    break  # first in, first out: later jobs wait behind this one
                queue.popleft()
                self.used_vcpus[ce_key] = used + need
                self._launch(job)

    def _make_runnable(self, job: ProcessJob) -> None:
        job.set_status("RUNNABLE")
        ce = job.compute_environment()
        self.runnable.setdefault(ce.arn if ce else "", deque()).append(job)

    def _dependencies(self, job: ProcessJob) -> str:
        for dependency in job.depends_on or []:
            other = job.all_jobs.get(dependency["jobId"])
            if other is None:
                continue
            if other.status == "FAILED":
                return "failed"
            if other.status != "SUCCEEDED":
                return "waiting"
        return "ready"

    def _launch(self, job: ProcessJob) -> None:
        job.set_status("STARTING")
        attempt_number = len(job.attempts) + 1
        job.log_stream_name = f"{job.job_definition.name}/default/{uuid.uuid4().hex}"
        job.job_started_at = datetime.now()
        job.killed_by_dispatcher = False
        job.stop_requested_reason = None
        job._start_attempt()
        if job.parent is not None:
            job.parent.children_started += 1
            if job.parent.status in ("SUBMITTED", "PENDING", "RUNNABLE"):
                job.parent.job_started_at = job.job_started_at
                job.parent.set_status("RUNNING")
        ensure_log_stream(job.backend, job.log_stream_name)
        try:
            process = subprocess.Popen(
                job.process_command(),
                env=job.process_environment(attempt_number),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # its own process group, killed as a whole
            )
        except (OSError, ValueError) as exc:
            job.latest_attempt["container"]["reason"] = f"CannotStartContainerError: {exc}"
            self._release(job)
            self._attempt_ended(job, exit_code=None, status_reason="Task failed to start")
            return
        job.process = process
        ce = job.compute_environment()
        if ce is not None and take_simulated(job.backend, ce.arn, LOSE_HOSTS_TAG):
            _signal_group(process, signal.SIGKILL)  # not the dispatcher's kill: reported as a lost host
        duration = job._get_attempt_duration()
        job.attempt_deadline = time.monotonic() + duration if duration else None
        job.set_status("RUNNING")
        self.running.add(job)
        threading.Thread(target=self._watch, args=(job, process), name=f"localaws-{job.job_id}", daemon=True).start()

    def _watch(self, job: ProcessJob, process: subprocess.Popen) -> None:
        stream = job.log_stream_name
        pending: list[dict[str, Any]] = []
        last_flush = time.monotonic()
        assert process.stdout is not None
        for raw in process.stdout:
            pending.append({"timestamp": _now_ms(), "message": raw.decode("utf-8", "replace").rstrip("\n")})
            if len(pending) >= 500 or time.monotonic() - last_flush > 0.5:
                put_log_events(job.backend, stream, pending)
                pending, last_flush = [], time.monotonic()
        returncode = process.wait()
        if pending:
            put_log_events(job.backend, stream, pending)
        with self.lock:
            self.running.discard(job)
            self._release(job)
            exit_code = returncode if returncode >= 0 else 128 - returncode
            if job.stop_requested_reason:
                status_reason = job.stop_requested_reason
            elif returncode == -signal.SIGKILL and not job.killed_by_dispatcher:
                status_reason = LOST_HOST_REASON
            else:
                status_reason = EXITED_REASON
            self._attempt_ended(job, exit_code=exit_code, status_reason=status_reason)
            self.wakeup.notify()

    def _release(self, job: ProcessJob) -> None:
        ce = job.compute_environment()
        ce_key = ce.arn if ce else ""
        self.used_vcpus[ce_key] = max(0.0, self.used_vcpus.get(ce_key, 0.0) - job.vcpus())

    def _attempt_ended(self, job: ProcessJob, exit_code: int | None, status_reason: str) -> None:
        attempt = job.latest_attempt
        attempt["container"]["exitCode"] = exit_code
        attempt["container"]["logStreamName"] = job.log_stream_name
        attempt["statusReason"] = status_reason
        attempt["stoppedAt"] = _now_ms()
        job.exit_code = exit_code
        job.process = None
        job.attempt_deadline = None
        if exit_code == 0 and not job.stop_requested_reason:
            self._finish(job, success=True, reason=None)
            return
        # AWS retries neither a terminated job nor one that ran past its timeout.
        stoppable = job.stop_requested_reason is None
        if stoppable and retry_decision(job.retry_strategy, len(job.attempts), attempt):
            self._make_runnable(job)
            return
        self._finish(job, success=False, reason=status_reason)

    def _finish(self, job: ProcessJob, success: bool, reason: str | None) -> None:
        job.job_stopped_reason = reason
        job.job_stopped = True
        job.job_stopped_at = datetime.now()
        job.set_status("SUCCEEDED" if success else "FAILED")
        if job.latest_attempt and "stoppedAt" not in job.latest_attempt:
            job.latest_attempt["stoppedAt"] = _now_ms()
        parent = job.parent
        if parent is not None:
            parent.children_ended += 1
            if not success:
                parent.children_failed.append(job)
            if parent.children_ended == len(parent._child_jobs or []):
                self._finish_parent(parent)

    def _finish_parent(self, parent: ProcessJob) -> None:
        failed = sorted(parent.children_failed, key=lambda child: child.array_index or 0)
        if failed:
            first = failed[0]
            reason = (
                f"Array job failed: {len(failed)} of {len(parent._child_jobs or [])} children FAILED; "
                f"first: index {first.array_index}: {first.job_stopped_reason}"
            )
            parent.children_failed = failed
        else:
            reason = None
        parent.job_stopped_reason = reason
        parent.job_stopped = True
        parent.job_stopped_at = datetime.now()
        parent.set_status("FAILED" if failed else "SUCCEEDED")

    def _kill(self, job: ProcessJob) -> None:
        process = job.process
        if process is None:
            return
        job.killed_by_dispatcher = True
        _signal_group(process, signal.SIGTERM)
        threading.Timer(TERMINATION_GRACE_SECONDS, _signal_group, args=(process, signal.SIGKILL)).start()


def _signal_group(process: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(process.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def ensure_log_stream(backend: moto_batch.BatchBackend, stream: str) -> None:
    logs = backend.logs_backend
    if LOG_GROUP not in logs.groups:
        logs.create_log_group(LOG_GROUP, tags={})
    logs.create_log_stream(LOG_GROUP, stream)


def put_log_events(backend: moto_batch.BatchBackend, stream: str, events: list[dict[str, Any]]) -> None:
    try:
        backend.logs_backend.put_log_events(LOG_GROUP, stream, events)
    except Exception:  # a log write must never kill the job watcher
        logger.exception("could not write %d log events to %s", len(events), stream)


_dispatcher: Dispatcher | None = None
_dispatcher_lock = threading.Lock()


def dispatcher() -> Dispatcher:
    global _dispatcher
    with _dispatcher_lock:
        if _dispatcher is None:
            _dispatcher = Dispatcher()
        return _dispatcher


# -- the patches --------------------------------------------------------------------------------

_ORIGINALS: dict[str, Any] = {}


THROTTLE_SUBMITS_TAG = "localaws:throttle_submits"
LOSE_HOSTS_TAG = "localaws:lose_hosts"


def take_simulated(backend: moto_batch.BatchBackend, arn: str, tag: str) -> bool:
    """Consume one occurrence of the simulated condition `tag` on resource `arn` (its value counts down)."""
    tags = backend.list_tags_for_resource(arn)
    try:
        left = int(tags.get(tag, "0"))
    except ValueError:
        left = 0
    if left <= 0:
        return False
    if left == 1:
        backend.untag_resource(arn, [tag])
    else:
        backend.tag_resource(arn, {tag: str(left - 1)})
    return True


def _submitjob(self: moto_batch_responses.BatchResponse) -> str:
    queue = self.batch_backend.get_job_queue(self._get_param("jobQueue") or "")
    if queue is not None and take_simulated(self.batch_backend, queue.arn, THROTTLE_SUBMITS_TAG):
        raise moto_batch_exceptions.ClientException("Too Many Requests")
    _submit_context.retry_strategy = self._get_param("retryStrategy")
    try:
        return _ORIGINALS["submitjob"](self)
    finally:
        _submit_context.retry_strategy = None


def _createcomputeenvironment(self: moto_batch_responses.BatchResponse) -> str:
    result = _ORIGINALS["createcomputeenvironment"](self)
    _set_unmanaged_vcpus(self)
    return result


def _updatecomputeenvironment(self: moto_batch_responses.BatchResponse) -> str:
    result = _ORIGINALS["updatecomputeenvironment"](self)
    _set_unmanaged_vcpus(self)
    return result


def _set_unmanaged_vcpus(response: moto_batch_responses.BatchResponse) -> None:
    vcpus = response._get_param("unmanagedvCpus")
    name = response._get_param("computeEnvironmentName") or response._get_param("computeEnvironment")
    env = response.batch_backend.get_compute_environment(name)
    if env is not None and vcpus is not None:
        env.unmanaged_vcpus = int(vcpus)
    if env is not None:
        compute_resources = response._get_param("computeResources")
        if compute_resources and env.compute_resources is not None:
            env.compute_resources.update(compute_resources)
        with dispatcher().lock:
            dispatcher().wakeup.notify()


def _describe_compute_environments(self: moto_batch.BatchBackend, environments: list[str] | None = None):
    described = _ORIGINALS["describe_compute_environments"](self, environments)
    for item in described:
        env = self.get_compute_environment(item["computeEnvironmentArn"])
        if env is not None and getattr(env, "unmanaged_vcpus", None) is not None:
            item["unmanagedvCpus"] = env.unmanaged_vcpus
    return described


def _cancel_job(self: moto_batch.BatchBackend, job_id: str, reason: str) -> None:
    if not job_id or not reason:
        return _ORIGINALS["cancel_job"](self, job_id, reason)
    job = self.get_job_by_id(job_id)
    if isinstance(job, ProcessJob):
        job.cancel(reason)


def _call_action(self: moto_batch_responses.BatchResponse):
    # Every Batch API call sees and changes job state under the lock the dispatcher and the job
    # watchers hold: no call observes a half-made change (a submit whose children are not all
    # attached yet, a parent between its last child's end and its own).
    with dispatcher().lock:
        return _ORIGINALS["call_action"](self)


def _reset(self: moto_batch.BatchBackend) -> None:
    with dispatcher().lock:
        for job in list(self._jobs.values()):
            if isinstance(job, ProcessJob) and not job.is_parent and job.status not in ENDED:
                job.terminate("endpoint reset")
        BaseBackend.reset(self)


def install(job_environment: dict[str, str] | None = None) -> None:
    """Make moto's Batch run jobs as local processes. Idempotent."""
    dispatcher().job_base_environment = dict(job_environment or {})
    if _ORIGINALS:
        return
    _ORIGINALS["Job"] = moto_batch.Job
    _ORIGINALS["submitjob"] = moto_batch_responses.BatchResponse.submitjob
    _ORIGINALS["createcomputeenvironment"] = moto_batch_responses.BatchResponse.createcomputeenvironment
    _ORIGINALS["updatecomputeenvironment"] = moto_batch_responses.BatchResponse.updatecomputeenvironment
    _ORIGINALS["describe_compute_environments"] = moto_batch.BatchBackend.describe_compute_environments
    _ORIGINALS["cancel_job"] = moto_batch.BatchBackend.cancel_job
    _ORIGINALS["call_action"] = moto_batch_responses.BatchResponse.call_action
    moto_batch.Job = ProcessJob
    moto_batch_responses.BatchResponse.submitjob = _submitjob
    moto_batch_responses.BatchResponse.createcomputeenvironment = _createcomputeenvironment
    moto_batch_responses.BatchResponse.updatecomputeenvironment = _updatecomputeenvironment
    moto_batch.BatchBackend.describe_compute_environments = _describe_compute_environments
    moto_batch.BatchBackend.cancel_job = _cancel_job
    moto_batch.BatchBackend.reset = _reset
    moto_batch_responses.BatchResponse.call_action = _call_action
