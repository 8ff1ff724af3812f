"""The house trigger: waits for an AWS Batch job in the triggerer, and terminates it when the task is killed.

The provider's `BatchJobTrigger` has no `on_kill`, so failing or clearing a deferred task leaves its
Batch job (and every array child) running and paid for. Airflow 3's triggerer calls
`BaseTrigger.on_kill` exactly when a person acts on the deferred task (mark failed or success,
clear), never on a triggerer restart or a timeout; this trigger then calls TerminateJob.

A timeout is the trigger's own `deadline`: the scheduler's trigger timeout resumes the task
without calling `on_kill`, and `dag.test()` ignores it, so the trigger terminates the job itself
and fires a TIMEOUT event.

The capacity watch (`runnable_timeout_s`) is the same `CapacityWatch` the task's own wait uses in
sync mode: when the job's children sit RUNNABLE that long with none starting, the trigger fires a
CAPACITY_WAIT event and the task (`UnitsOfWorkOperator.execute_complete`) makes the failover, as
in sync mode. The trigger only observes: the fallback queue is chosen and the job cancelled in the
task, so both modes share one failover.
"""
from __future__ import annotations

import asyncio
import time
from typing import Any, AsyncIterator

from airflow.triggers.base import BaseTrigger, TriggerEvent

from operators.kit.batch_hook import SHARD_TIMEOUT_REASON, HouseBatchHook
from operators.kit.job_states import ENDED, RUNNABLE, STARTED, WAITING

TIMEOUT = "TIMEOUT"
#: The trigger's event when the watched job's children have sat RUNNABLE for `runnable_timeout_s` with none starting.
CAPACITY_WAIT = "capacity_wait"


def runnable_and_started(job: dict[str, Any]) -> tuple[int, int]:
    """(children waiting for a place to run, children that ever started) of an array job; a job alone counts as one."""
    summary = job.get("arrayProperties", {}).get("statusSummary")
    if summary is None:
        waiting = 1 if job["status"] in WAITING else 0
        return (1 if job["status"] == RUNNABLE else 0), 1 - waiting
    return int(summary.get(RUNNABLE, 0)), sum(int(summary.get(s, 0)) for s in STARTED)


class CapacityWatch:
    """Whether a job has a capacity shortage: children RUNNABLE and none started for `timeout_s`.

    Fed each description of the job (`observe`); the clock restarts whenever nothing is RUNNABLE or
    another child starts, so a busy queue (children waiting behind running ones that end and make
    room) is not a shortage. The task's sync wait and the trigger both use it.
    """

    def __init__(self, timeout_s: float):
        self.timeout_s = float(timeout_s)
        self.since: float | None = None
        self.started: int | None = None

    def observe(self, job: dict[str, Any], now: float) -> tuple[int, float] | None:
        """(children RUNNABLE, seconds waited) once the job has waited `timeout_s`; None before."""
        runnable, started = runnable_and_started(job)
        if not runnable or started != self.started or self.since is None:
            self.since, self.started = (now if runnable else None), started
            return None
        waited = now - self.since
        return (runnable, waited) if waited >= self.timeout_s else None


def queue_name(arn: str | None) -> str | None:
    """The name in a job queue ARN (`...:job-queue/airbatch-cpu` -> `airbatch-cpu`); a name stays as it is."""
    return arn.rsplit("/", 1)[-1] if arn else None


def progress_line(job: dict[str, Any]) -> str:
    """A job's status, with the count of array children per status when it is an array job."""
    summary = job.get("arrayProperties", {}).get("statusSummary")
    if not summary:
        return job["status"]
    counts = ", ".join(f"{n} {s}" for s, n in sorted(summary.items()) if n)
    return f"{job['status']} (children: {counts or 'none yet'})"


class BatchJobWaitTrigger(BaseTrigger):
    """Poll DescribeJobs every `poll_interval` seconds; fire once the job SUCCEEDED or FAILED, or at `deadline`.

    `deadline` (epoch seconds) ends the wait with a TIMEOUT event, after terminating the job when
    `terminate_on_kill` (the job is this task's own; a job of another run is only waited for).
    `runnable_timeout_s` (None: no watch) fires a CAPACITY_WAIT event once the job's children have sat
    RUNNABLE that long with none starting (CapacityWatch); the job is left as it is for the task to
    move. A triggerer restart starts the watch's clock again (the trigger is built anew from its kwargs).
    """

    def __init__(self, job_id: str, aws_conn_id: str | None = "aws_default", region_name: str | None = None,
                 poll_interval: float = 10, terminate_on_kill: bool = True, deadline: float | None = None,
                 runnable_timeout_s: float | None = None):
        super().__init__()
        self.job_id = job_id
        self.aws_conn_id = aws_conn_id
        self.region_name = region_name
        self.poll_interval = poll_interval
        self.terminate_on_kill = terminate_on_kill
        self.deadline = deadline
        self.runnable_timeout_s = runnable_timeout_s

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return ("operators.kit.triggers.BatchJobWaitTrigger", {
            "job_id": self.job_id, "aws_conn_id": self.aws_conn_id, "region_name": self.region_name,
            "poll_interval": self.poll_interval, "terminate_on_kill": self.terminate_on_kill,
            "deadline": self.deadline, "runnable_timeout_s": self.runnable_timeout_s,
        })

    def hook(self) -> HouseBatchHook:
        return HouseBatchHook(aws_conn_id=self.aws_conn_id, region_name=self.region_name)

    #: The least time between the trigger's start and its event. A trigger that fires before the scheduler has
    #: handled the deferring try's exit (a job that ends at once) lets Airflow's scheduler take that exit for the
    #: resumed try's end and send the task to retry (apache/airflow#66374, #72716).
    settle_s = 5.0

    async def run(self) -> AsyncIterator[TriggerEvent]:
        last = None
        started = time.monotonic()
        watch = CapacityWatch(self.runnable_timeout_s) if self.runnable_timeout_s else None

        async def settle() -> None:
            await asyncio.sleep(max(0.0, self.settle_s - (time.monotonic() - started)))

        async with self.hook().async_calls() as batch:
            while True:
                job = await batch.describe_job(self.job_id)
                if job is None:
                    yield TriggerEvent({"job_id": self.job_id, "status": "MISSING",
                                        "reason": f"AWS Batch job {self.job_id} not found"})
                    return
                progress = progress_line(job)
                if progress != last:
                    self.log.info("AWS Batch job %s: %s", self.job_id, progress)
                    last = progress
                if job["status"] in ENDED:
                    await settle()
                    yield TriggerEvent({"job_id": self.job_id, "status": job["status"],
                                        "reason": job.get("statusReason", "")})
                    return
                shortage = watch.observe(job, time.time()) if watch else None
                if shortage:
                    runnable, waited = shortage
                    queue = queue_name(job.get("jobQueue"))
                    self.log.warning("AWS Batch job %s: %d children RUNNABLE for %.0f s on %s with none starting: "
                                     "handing it back to the task for the capacity failover", self.job_id, runnable,
                                     waited, queue)
                    await settle()
                    yield TriggerEvent({"job_id": self.job_id, "status": CAPACITY_WAIT, "runnable": runnable,
                                        "waited_s": round(waited, 3), "queue": queue,
                                        "reason": f"{runnable} children RUNNABLE for {waited:.0f} s on {queue}"})
                    return
                if self.deadline is not None and time.time() >= self.deadline:
                    reason = f"the shard's timeout passed while AWS Batch job {self.job_id} was {job['status']}"
                    if self.terminate_on_kill:
                        self.log.warning("%s: terminating it", reason)
                        await batch.terminate(self.job_id, reason=SHARD_TIMEOUT_REASON)
                    yield TriggerEvent({"job_id": self.job_id, "status": TIMEOUT, "reason": reason})
                    return
                remaining = self.deadline - time.time() if self.deadline is not None else self.poll_interval
                await asyncio.sleep(max(0.0, min(self.poll_interval, remaining)))

    async def on_kill(self) -> None:
        if not self.terminate_on_kill:
            return
        self.log.info("Task killed while deferred: terminating AWS Batch job %s", self.job_id)
        try:
            async with self.hook().async_calls() as batch:
                await batch.terminate(self.job_id, reason="Airflow task killed while deferred")
        except Exception:
            self.log.exception("Could not terminate AWS Batch job %s; it may still be running", self.job_id)
