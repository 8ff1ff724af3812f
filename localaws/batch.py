"""AWS Batch jobs that really run, as local processes, behind moto's Batch API.

moto 5.2.5 runs a Batch job in Docker (no engine here) or, in `batch_simple` mode, not at all.
`ProcessJob` replaces moto's `Job` (moto builds jobs through the module global
`moto.batch.models.Job`, so the swap takes effect for every submit) and hands each job to one
`Dispatcher` that behaves like a Batch scheduler on one host:

* statuses SUBMITTED -> PENDING -> RUNNABLE -> STARTING -> RUNNING -> SUCCEEDED | FAILED, with a
  start latency (`start_seconds`, `LOCALAWS_BATCH_START_SECONDS`) spread over the stages before
  RUNNING, as a warm compute environment takes on AWS (0: as fast as the dispatcher goes);
* capacity: a job takes its vCPUs when it leaves RUNNABLE, only while its compute environment has
  them free (`unmanagedvCpus` or `computeResources.maxvCpus`, default: this machine's cores);
* array jobs: children are spawned PENDING and run; the parent goes PENDING once they do and stays
  PENDING while they run (`arrayProperties.statusSummary`), then ends FAILED if any child failed,
  SUCCEEDED when all succeeded;
* ListJobs as AWS answers it: RUNNING jobs unless `jobStatus` or `filters` say otherwise, a queue's
  array parents but not their children (`arrayJobId` lists those), filters, pages;
* `retryStrategy` with `evaluateOnExit` (job definition or submit_job), every attempt recorded;
* `timeout.attemptDurationSeconds`; terminate/cancel reach array children; the whole process
  group is killed;
* each attempt's stdout and stderr go to CloudWatch Logs `/aws/batch/job`;
* `dependsOn` by job id (an array child of a parent, or a whole job).

A process killed from outside (SIGKILL by anyone but the dispatcher) is reported as a lost host,
the way AWS reports a reclaimed Spot instance, so retry rules on "Host EC2*" can be exercised.

Job processes do not outlive the endpoint: each is started (by the dispatcher thread, which lives as
long as the process) with PR_SET_PDEATHSIG = SIGKILL, and a small reaper process kills every job's
process group once the endpoint is gone, however it ended.

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

import base64
import copy
import fnmatch
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import deque
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import moto.batch.exceptions as moto_batch_exceptions
import moto.batch.models as moto_batch
import moto.batch.responses as moto_batch_responses
from moto.core.base_backend import BaseBackend

from localaws.sandbox import JobSandbox, SandboxError
from operators.kit.job_states import (ENDED, FAILED, PENDING, RUNNABLE, RUNNING, STARTING, STATUSES, SUBMITTED,
                                      SUCCEEDED, WAITING)

logger = logging.getLogger(__name__)

LOG_GROUP = "/aws/batch/job"
EXITED_REASON = "Essential container in task exited"
TIMEOUT_REASON = "Job attempt duration exceeded timeout"
LOST_HOST_REASON = "Host EC2 (instance i-0localhost) terminated."
DEPENDENCY_FAILED_REASON = "Dependent Job failed"
TERMINATION_GRACE_SECONDS = 2.0

#: How the start latency (Dispatcher.start_seconds: LOCALAWS_BATCH_START_SECONDS, read by localaws.server)
#: is spread over the stages before RUNNING, so that a poller sees each:
#: the scheduler takes the job in (SUBMITTED), checks its dependencies (PENDING), places it (RUNNABLE,
#: and then for as long as its compute environment has no free vCPUs), the container starts (STARTING).
#: An array child is spawned PENDING: it spends the SUBMITTED share there too.
STAGE_SHARES = {SUBMITTED: 0.2, PENDING: 0.2, RUNNABLE: 0.2, STARTING: 0.4}

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
        self._state = SUBMITTED
        self.retry_strategy = getattr(_submit_context, "retry_strategy", None) or self.job_definition.retry_strategy
        self.process: subprocess.Popen | None = None
        self.attempt_deadline: float | None = None
        self.stop_requested_reason: str | None = None
        self.killed_by_dispatcher = False
        #: time.monotonic() at which the job may leave its current stage (SUBMITTED, PENDING, RUNNABLE, STARTING)
        self.due = 0.0
        #: set when the job (an attempt; for a parent, its first child) went RUNNING: startedAt is shown from then
        self.started = False
        self.is_cancelled = False
        self.is_terminated = False
        self.array_index: int | None = self.array_properties.get("index")
        self.parent: ProcessJob | None = None
        if self.array_index is not None:
            self.parent = self.all_jobs.get(self.job_id.rsplit(":", 1)[0])
        self.children_ended = 0
        self.children_failed: list[ProcessJob] = []
        self.children_started = 0
        #: epoch ms of the last change of a child's status (statusSummaryLastUpdatedAt)
        self.summary_updated_ms = _now_ms()

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
        if value == self._state:
            return
        self._state = value
        if self.parent is not None:
            self.parent.summary_updated_ms = _now_ms()

    @property
    def is_parent(self) -> bool:
        return bool(self._child_jobs)

    def start(self) -> None:
        """moto calls this to run the job in a thread; the dispatcher schedules it instead."""
        dispatcher().submit(self)

    def run(self) -> None:  # pragma: no cover - the thread is never started
        raise RuntimeError("ProcessJob runs through the dispatcher")

    # -- what the API shows -------------------------------------------------------------------

    def array_properties_shown(self) -> dict[str, Any] | None:
        """arrayProperties as AWS shows them: a child's index; a parent's size and its children per status."""
        if self.array_index is not None:
            return {"index": self.array_index}
        children = self._child_jobs
        if not children:
            return None
        summary = dict.fromkeys(STATUSES, 0)
        for child in children:
            summary[child.status] += 1
        return {"statusSummary": summary, "statusSummaryLastUpdatedAt": self.summary_updated_ms,
                "size": len(children)}

    def stopped_container_reason(self) -> str | None:
        return (self.latest_attempt or {}).get("container", {}).get("reason") if self.job_stopped else None

    def describe_short(self) -> dict[str, Any]:
        """A JobSummary (ListJobs): startedAt only once the job ran, a stopped job's exit code and reason."""
        result: dict[str, Any] = {
            "jobArn": self.arn,
            "jobId": self.job_id,
            "jobName": self.job_name,
            "createdAt": moto_batch.datetime2int_milliseconds(self.job_created_at),
            "status": self.status,
            "jobDefinition": self.job_definition.arn,
        }
        if self.job_stopped_reason:
            result["statusReason"] = self.job_stopped_reason
        if self.started:
            result["startedAt"] = moto_batch.datetime2int_milliseconds(self.job_started_at)
        if self.job_stopped:
            result["stoppedAt"] = moto_batch.datetime2int_milliseconds(self.job_stopped_at)
            container: dict[str, Any] = {}
            if self.exit_code is not None:
                container["exitCode"] = self.exit_code
            if self.stopped_container_reason():
                container["reason"] = self.stopped_container_reason()
            if container:
                result["container"] = container
        array = self.array_properties_shown()
        if array is not None:
            result["arrayProperties"] = array
        if self.is_cancelled:
            result["isCancelled"] = True
        if self.is_terminated:
            result["isTerminated"] = True
        return result

    def describe(self) -> dict[str, Any]:
        children = self._child_jobs
        result = super().describe()  # starts from describe_short() above
        result["status"] = self.status
        if self.job_stopped_reason:
            result["statusReason"] = self.job_stopped_reason
        if self.retry_strategy:
            result["retryStrategy"] = self.retry_strategy
        array = self.array_properties_shown()
        if array is not None:
            result["arrayProperties"] = array
        if children:
            first = (self.children_failed or children)[0]
            if first.log_stream_name and "container" in result:
                result["container"]["logStreamName"] = first.log_stream_name
        if "container" in result and self.job_stopped:
            result["container"]["exitCode"] = self.exit_code
            if self.stopped_container_reason():
                result["container"]["reason"] = self.stopped_container_reason()
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
        flag = "is_cancelled" if only_before_start else "is_terminated"
        with dispatcher().lock:
            accepted = False
            for job in self._child_jobs if self.is_parent else [self]:
                if dispatcher().request_stop(job, reason, only_before_start=only_before_start):
                    setattr(job, flag, True)
                    accepted = True
            if accepted and self.is_parent:
                setattr(self, flag, True)


# -- ending job processes with the endpoint ------------------------------------------------------

#: Started through `setpriv --pdeathsig KILL` (util-linux), which calls prctl(PR_SET_PDEATHSIG, SIGKILL) in the
#: child: the kernel kills the job process when the thread that started it ends (the dispatcher thread, which
#: lives as long as the endpoint process). Then `sh` checks that its parent is still the endpoint (it may
#: have died between the fork and the prctl; the child then ends itself), drops the PWD it exports, and execs
#: the command in place: same pid, same process group. Two small exec()s, about 1 ms; a preexec_fn calling
#: prctl would make subprocess fork() the whole endpoint process instead of vfork(), tens of milliseconds per
#: job in a large process (the test suite's).
_CHECK_PARENT = 'unset PWD; test "$PPID" = "$1" || kill -KILL $$; shift; exec "$@"'


def _death_signal_prefix() -> list[str]:
    """The command prefix that makes a job process die with the endpoint; [] where setpriv cannot."""
    setpriv, sh = shutil.which("setpriv"), shutil.which("sh")
    if not (sys.platform.startswith("linux") and setpriv and sh):
        return []
    try:  # --pdeathsig is util-linux 2.33 (2018) and later
        subprocess.run([setpriv, "--pdeathsig", "KILL", "--", sh, "-c", _CHECK_PARENT, "sh", str(os.getpid()), "true"],
                       check=True, timeout=30, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, env={})
    except (OSError, subprocess.SubprocessError):
        return []
    return [setpriv, "--pdeathsig", "KILL", "--", sh, "-c", _CHECK_PARENT, "sh"]


#: Reads "+PGID" / "-PGID" lines (job process groups started / ended) until the endpoint's end of the
#: pipe closes, which happens however the endpoint ends, then SIGKILLs every group still listed: what
#: a job started of its own (PDEATHSIG reaches only the group's first process) dies with the endpoint.
_REAPER_SOURCE = """
import os, signal, sys
groups = set()
for line in sys.stdin.buffer:
    sign, pgid = line[:1], int(line[1:])
    if sign == b"+":
        groups.add(pgid)
    else:
        groups.discard(pgid)
for pgid in groups:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except OSError:
        pass
"""


class GroupReaper:
    """The endpoint's side of the reaper process: started with the first job process, told of each group."""

    def __init__(self) -> None:
        self._pipe: IO[bytes] | None = None
        self._process: subprocess.Popen | None = None
        self._broken = False

    def _tell(self, line: str) -> None:
        if self._broken:
            return
        try:
            if self._pipe is None:
                # its own session: a Ctrl-C or a signal to the endpoint's process group does not reach it
                self._process = subprocess.Popen([sys.executable, "-I", "-S", "-c", _REAPER_SOURCE],
                                                 stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                                 stderr=subprocess.DEVNULL, start_new_session=True)
                self._pipe = self._process.stdin
            assert self._pipe is not None
            self._pipe.write(line.encode() + b"\n")
            self._pipe.flush()
        except OSError:
            self._broken = True
            logger.exception("the job process reaper is gone: job processes may outlive this endpoint")

    def add(self, pgid: int) -> None:
        self._tell(f"+{pgid}")

    def remove(self, pgid: int) -> None:
        self._tell(f"-{pgid}")


class Dispatcher:
    """One scheduler thread for every ProcessJob of this endpoint process."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.wakeup = threading.Condition(self.lock)
        self.pending: list[ProcessJob] = []  # SUBMITTED, or PENDING: their stage's share, then dependencies
        self.runnable: dict[str, deque[ProcessJob]] = {}  # per compute environment, in submit order
        self.starting: list[ProcessJob] = []  # STARTING: holding their vCPUs, their process not started yet
        self.running: set[ProcessJob] = set()
        self.used_vcpus: dict[str, float] = {}
        self.job_base_environment: dict[str, str] = {}
        #: isolates each job (localaws/sandbox.py); None where this machine cannot (the endpoint says so at start)
        self.sandbox: JobSandbox | None = None
        #: each attempt's scratch folder lives here, private to this endpoint; removed when the attempt ends
        self.scratch_root: Path | None = None
        self.default_vcpus = float(os.cpu_count() or 1)
        #: submit to RUNNING with free capacity (see STAGE_SHARES); set by install()
        self.start_seconds = 0.0
        self.reaper = GroupReaper()
        self.death_signal_prefix = _death_signal_prefix()
        if not self.death_signal_prefix:
            logger.warning("no `setpriv --pdeathsig` here: a job process outlives an endpoint killed with SIGKILL "
                           "until the reaper process kills its group")
        self._thread = threading.Thread(target=self._loop, name="localaws-batch-dispatcher", daemon=True)
        self._thread.start()

    def stage_seconds(self, status: str) -> float:
        return self.start_seconds * STAGE_SHARES[status]

    # -- requests from the API threads ---------------------------------------------------------

    def submit(self, job: ProcessJob) -> None:
        with self.lock:
            now = time.monotonic()
            if job.parent is not None:  # spawned by its parent, PENDING from the start (its createdAt on AWS)
                job.set_status(PENDING)
                job.due = now + self.stage_seconds(SUBMITTED) + self.stage_seconds(PENDING)
            else:
                job.due = now + self.stage_seconds(SUBMITTED)
            if not self._advance_pending(job, now):
                self.pending.append(job)
            self.wakeup.notify()

    def request_stop(self, job: ProcessJob, reason: str, only_before_start: bool) -> bool:
        """Stop `job` (cancel: only before it started); True when the request was accepted."""
        with self.lock:
            if job.status in ENDED:
                return False
            if job.status in WAITING:
                self._finish(job, success=False, reason=reason)
                return True
            if only_before_start:
                return False  # CancelJob leaves STARTING and RUNNING jobs alone, as on AWS
            if job.status == STARTING and job.process is None:
                self._release(job)  # it took its vCPUs when it left RUNNABLE
                self._finish(job, success=False, reason=reason)
                return True
            job.stop_requested_reason = reason
            self._kill(job)
            return True

    def stop_started(self, reason: str, timeout: float = TERMINATION_GRACE_SECONDS + 3) -> None:
        """Terminate every job STARTING or RUNNING, and wait (up to `timeout`) for their processes to end."""
        with self.lock:
            for job in [*self.starting, *self.running]:
                if job.status not in ENDED:
                    job.terminate(reason)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if not self.running:
                    return
            time.sleep(0.05)

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
        pause = 0.1
        while True:
            with self.lock:
                self.wakeup.wait(timeout=pause)
                try:
                    self._check_deadlines()
                    self._schedule()
                    pause = self._next_pause()
                except Exception:  # the dispatcher must outlive any one job's error
                    logger.exception("dispatcher pass failed")
                    pause = 0.1

    def _next_pause(self) -> float:
        """Until the next stage change is due (at most 0.1 s: deadlines, capacity freed elsewhere)."""
        now = time.monotonic()
        dues = [job.due for job in self.pending] + [job.due for job in self.starting]
        dues += [queue[0].due for queue in self.runnable.values() if queue]
        return min([0.1, *(due - now for due in dues if due > now)])

    def _check_deadlines(self) -> None:
        now = time.monotonic()
        for job in list(self.running):
            if job.attempt_deadline is not None and now > job.attempt_deadline and not job.stop_requested_reason:
                job.stop_requested_reason = TIMEOUT_REASON
                self._kill(job)

    def _schedule(self) -> None:
        now = time.monotonic()
        self.pending = [job for job in self.pending if not self._advance_pending(job, now)]
        for ce_key, queue in self.runnable.items():
            while queue:
                job = queue[0]
                if job.status != RUNNABLE:  # stopped while it waited
                    queue.popleft()
                    continue
                if getattr(job.compute_environment(), "state", "ENABLED") == "DISABLED":
                    break  # no capacity: the queue's jobs stay RUNNABLE
                if now < job.due:
                    break  # first in, first out: later jobs wait behind this one
                need = job.vcpus()
                used = self.used_vcpus.get(ce_key, 0.0)
                if used > 0 and used + need > self.capacity(job.compute_environment()):
                    break
                queue.popleft()
                self.used_vcpus[ce_key] = used + need
                self._place(job, now)
        starting, self.starting = self.starting, []
        for job in starting:
            if job.status != STARTING:  # terminated while it started
                continue
            if now < job.due:
                self.starting.append(job)
            else:
                self._spawn(job)

    def _advance_pending(self, job: ProcessJob, now: float) -> bool:
        """Move a SUBMITTED or PENDING job on when its stage's time is up; True once it has left both."""
        if job.status in ENDED:
            return True
        if job.status == SUBMITTED:
            if now < job.due:
                return False
            job.set_status(PENDING)
            job.due = now + self.stage_seconds(PENDING)
        if now < job.due:
            return False
        parent = job.parent
        if parent is not None and parent.status == SUBMITTED:
            parent.set_status(PENDING)  # and PENDING it stays while its children run, as on AWS
        verdict = self._dependencies(job)
        if verdict == "failed":
            self._finish(job, success=False, reason=DEPENDENCY_FAILED_REASON)
            return True
        if verdict == "waiting":
            return False
        self._make_runnable(job, now)
        return True

    def _make_runnable(self, job: ProcessJob, now: float) -> None:
        job.set_status(RUNNABLE)
        job.due = now + self.stage_seconds(RUNNABLE)
        ce = job.compute_environment()
        self.runnable.setdefault(ce.arn if ce else "", deque()).append(job)

    def _dependencies(self, job: ProcessJob) -> str:
        for dependency in job.depends_on or []:
            other = job.all_jobs.get(dependency["jobId"])
            if other is None:
                continue
            if other.status == FAILED:
                return "failed"
            if other.status != SUCCEEDED:
                return "waiting"
        return "ready"

    def _place(self, job: ProcessJob, now: float) -> None:
        """RUNNABLE -> STARTING: the job holds its vCPUs from here; its process starts when STARTING is over."""
        job.set_status(STARTING)
        job.log_stream_name = f"{job.job_definition.name}/default/{uuid.uuid4().hex}"
        job.killed_by_dispatcher = False
        job.stop_requested_reason = None
        delay = self.stage_seconds(STARTING)
        if delay <= 0:
            self._spawn(job)
            return
        job.due = now + delay
        self.starting.append(job)

    def _spawn(self, job: ProcessJob) -> None:
        """STARTING -> RUNNING: the attempt and its process group."""
        # PR_SET_PDEATHSIG is tied to the thread that forks: only this long-lived thread starts job processes.
        assert threading.current_thread() is self._thread, "job processes are started by the dispatcher thread"
        attempt_number = len(job.attempts) + 1
        job.job_started_at = datetime.now()
        job.started = True
        job._start_attempt()
        parent = job.parent
        if parent is not None:
            parent.children_started += 1
            if not parent.started:
                parent.job_started_at = job.job_started_at
                parent.started = True
        ensure_log_stream(job.backend, job.log_stream_name)
        env = job.process_environment(attempt_number)
        scratch = None
        try:
            command = job.process_command()
            if not command or not shutil.which(command[0], path=env.get("PATH", os.defpath)):
                raise FileNotFoundError(f"executable file not found in $PATH: {command[:1]}")
            if self.sandbox is not None:
                scratch = self.new_scratch(job, attempt_number)
                command, env = self.sandbox.wrap(command, scratch, env, job.job_definition.container_properties)
            prefix = self.death_signal_prefix and [*self.death_signal_prefix, str(os.getpid())]
            process = subprocess.Popen(
                [*prefix, *command],
                env=env,
                cwd=scratch,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # its own process group, killed as a whole
            )
        except (OSError, ValueError, subprocess.SubprocessError, SandboxError) as exc:
            _remove_scratch(scratch)
            job.latest_attempt["container"]["reason"] = f"CannotStartContainerError: {exc}"
            self._release(job)
            self._attempt_ended(job, exit_code=None, status_reason="Task failed to start")
            return
        self.reaper.add(process.pid)
        job.process = process
        ce = job.compute_environment()
        if ce is not None and take_simulated(job.backend, ce.arn, LOSE_HOSTS_TAG):
            _signal_group(process, signal.SIGKILL)  # not the dispatcher's kill: reported as a lost host
        duration = job._get_attempt_duration()
        job.attempt_deadline = time.monotonic() + duration if duration else None
        job.set_status(RUNNING)
        self.running.add(job)
        threading.Thread(target=self._watch, args=(job, process, scratch), name=f"localaws-{job.job_id}",
                         daemon=True).start()

    def new_scratch(self, job: ProcessJob, attempt_number: int) -> Path:
        """The attempt's own folder, as a new container's file system is: empty, private."""
        if self.scratch_root is None or not self.scratch_root.is_dir():
            self.scratch_root = Path(tempfile.mkdtemp(prefix="localaws-jobs-"))  # mode 0700
        scratch = self.scratch_root / f"{job.job_id}-{attempt_number}"
        scratch.mkdir(mode=0o700)
        return scratch

    def remove_scratch_root(self) -> None:
        """The scratch folders' parent, once no job runs (each attempt removes its own folder when it ends)."""
        with self.lock:
            if self.scratch_root is not None and not self.running and not self.starting:
                shutil.rmtree(self.scratch_root, ignore_errors=True)
                self.scratch_root = None

    def _watch(self, job: ProcessJob, process: subprocess.Popen, scratch: Path | None = None) -> None:
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
        _remove_scratch(scratch)
        if pending:
            put_log_events(job.backend, stream, pending)
        with self.lock:
            self.reaper.remove(process.pid)
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
            self._make_runnable(job, time.monotonic())
            return
        self._finish(job, success=False, reason=status_reason)

    def _finish(self, job: ProcessJob, success: bool, reason: str | None) -> None:
        job.job_stopped_reason = reason
        job.job_stopped = True
        job.job_stopped_at = datetime.now()
        job.set_status(SUCCEEDED if success else FAILED)
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
        parent.set_status(FAILED if failed else SUCCEEDED)

    def _kill(self, job: ProcessJob) -> None:
        process = job.process
        if process is None:
            return
        job.killed_by_dispatcher = True
        _signal_group(process, signal.SIGTERM)
        threading.Timer(TERMINATION_GRACE_SECONDS, _signal_group, args=(process, signal.SIGKILL)).start()


def _remove_scratch(scratch: Path | None) -> None:
    if scratch is not None:
        shutil.rmtree(scratch, ignore_errors=True)


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


#: The most jobs one ListJobs page holds, as on AWS: 1000 listing by status, 100 with `filters` (fewer with maxResults).
LIST_PAGE_BY_STATUS = 1000
LIST_PAGE_WITH_FILTERS = 100


def _prefix_match(value: str, pattern: str) -> bool:
    return value.startswith(pattern[:-1]) if pattern.endswith("*") else value == pattern


def _filter_matches(job: ProcessJob, name: str, values: list[str]) -> bool:
    """One ListJobs filter (AWS's names and rules); a value list matches when any of its values does."""
    if name == "JOB_NAME":  # case-insensitive, `prefix*`
        return any(_prefix_match(job.job_name.lower(), value.lower()) for value in values)
    if name == "JOB_DEFINITION":  # case-sensitive; a name (every revision, `prefix*`) or an ARN
        definition = job.job_definition
        for value in values:
            if value.startswith("arn:"):
                if value in (definition.arn, definition.arn.rsplit(":", 1)[0]):
                    return True
            elif _prefix_match(definition.name, value):
                return True
        return False
    if name in ("BEFORE_CREATED_AT", "AFTER_CREATED_AT"):  # epoch milliseconds
        created = moto_batch.datetime2int_milliseconds(job.job_created_at)
        try:
            times = [int(value) for value in values]
        except ValueError:
            raise moto_batch_exceptions.ClientException(f"{name} takes epoch milliseconds, not {values}") from None
        return any(created < t if name == "BEFORE_CREATED_AT" else created > t for t in times)
    if name == "SHARE_IDENTIFIER":
        return False  # no fair-share scheduling here: no job has a share identifier
    raise moto_batch_exceptions.ClientException(
        f"Invalid filter name {name!r}: JOB_NAME, JOB_DEFINITION, BEFORE_CREATED_AT, AFTER_CREATED_AT, SHARE_IDENTIFIER")


def list_jobs(backend: moto_batch.BatchBackend, queue: str | None, array_job_id: str | None,
              job_status: str | None, filters: list[dict[str, Any]] | None) -> list[ProcessJob]:
    """The jobs ListJobs answers with, as AWS chooses them.

    A queue lists its jobs and array parents, not array children (`arrayJobId` lists those). Without
    `filters` only jobs in `jobStatus` are listed, RUNNING when none is given; `filters` list every
    status, newest first, and do not apply to an array's children.
    """
    if job_status is not None and job_status not in STATUSES:
        raise moto_batch_exceptions.ClientException(
            "Job status is not one of SUBMITTED | PENDING | RUNNABLE | STARTING | RUNNING | SUCCEEDED | FAILED")
    if array_job_id:
        parent = backend.get_job_by_id(array_job_id)
        jobs = list(parent._child_jobs or []) if parent is not None else []
        filters = None
    elif queue:
        job_queue = backend.get_job_queue(queue)
        if job_queue is None:
            raise moto_batch_exceptions.ClientException(f"Job queue {queue} does not exist")
        jobs = [job for job in job_queue.jobs if getattr(job, "array_index", None) is None]
    else:
        jobs = []  # a multi-node job's nodes: there are no multi-node jobs here
    if filters:
        jobs = [job for job in jobs if all(_filter_matches(job, f.get("name", ""), f.get("values") or [])
                                           for f in filters)]
        return sorted(jobs, key=lambda job: job.job_created_at, reverse=True)
    status = job_status or RUNNING
    return [job for job in jobs if job.status == status]


def _page_start(token: str | None) -> int:
    if not token:
        return 0
    try:
        kind, _, offset = base64.urlsafe_b64decode(token.encode()).decode().partition(":")
        if kind == "localaws-listjobs" and int(offset) >= 0:
            return int(offset)
    except (ValueError, UnicodeDecodeError):
        pass
    raise moto_batch_exceptions.ClientException("Invalid nextToken")


def _listjobs(self: moto_batch_responses.BatchResponse) -> str:
    filters = self._get_param("filters")
    jobs = list_jobs(self.batch_backend, self._get_param("jobQueue"), self._get_param("arrayJobId"),
                     self._get_param("jobStatus"), filters)
    size = LIST_PAGE_WITH_FILTERS if filters else LIST_PAGE_BY_STATUS
    max_results = self._get_param("maxResults")
    if max_results is not None:
        if int(max_results) < 1:
            raise moto_batch_exceptions.ClientException("maxResults must be at least 1")
        size = min(size, int(max_results))
    start = _page_start(self._get_param("nextToken"))
    result: dict[str, Any] = {"jobSummaryList": [job.describe_short() for job in jobs[start:start + size]]}
    if start + size < len(jobs):
        result["nextToken"] = base64.urlsafe_b64encode(f"localaws-listjobs:{start + size}".encode()).decode()
    return json.dumps(result)


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


def install(job_environment: dict[str, str] | None = None, start_seconds: float = 0.0,
            sandbox: JobSandbox | None = None) -> None:
    """Make moto's Batch run jobs as local processes, `start_seconds` from submit to RUNNING, each isolated by
    `sandbox` when given. Idempotent."""
    dispatcher().job_base_environment = dict(job_environment or {})
    dispatcher().start_seconds = float(start_seconds)
    dispatcher().sandbox = sandbox
    if _ORIGINALS:
        return
    _ORIGINALS["Job"] = moto_batch.Job
    _ORIGINALS["submitjob"] = moto_batch_responses.BatchResponse.submitjob
    _ORIGINALS["createcomputeenvironment"] = moto_batch_responses.BatchResponse.createcomputeenvironment
    _ORIGINALS["updatecomputeenvironment"] = moto_batch_responses.BatchResponse.updatecomputeenvironment
    _ORIGINALS["describe_compute_environments"] = moto_batch.BatchBackend.describe_compute_environments
    _ORIGINALS["cancel_job"] = moto_batch.BatchBackend.cancel_job
    _ORIGINALS["call_action"] = moto_batch_responses.BatchResponse.call_action
    _ORIGINALS["listjobs"] = moto_batch_responses.BatchResponse.listjobs
    moto_batch.Job = ProcessJob
    moto_batch_responses.BatchResponse.submitjob = _submitjob
    moto_batch_responses.BatchResponse.createcomputeenvironment = _createcomputeenvironment
    moto_batch_responses.BatchResponse.updatecomputeenvironment = _updatecomputeenvironment
    moto_batch.BatchBackend.describe_compute_environments = _describe_compute_environments
    moto_batch.BatchBackend.cancel_job = _cancel_job
    moto_batch.BatchBackend.reset = _reset
    moto_batch_responses.BatchResponse.call_action = _call_action
    moto_batch_responses.BatchResponse.listjobs = _listjobs
