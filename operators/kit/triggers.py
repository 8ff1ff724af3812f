"""The house trigger: waits for an AWS Batch job in the triggerer, and terminates it when the task is killed.

The provider's `BatchJobTrigger` has no `on_kill`, so failing or clearing a deferred task leaves its
Batch job (and every array child) running and paid for. Airflow 3's triggerer calls
`BaseTrigger.on_kill` exactly when a person acts on the deferred task (mark failed or success,
clear), never on a triggerer restart or a timeout; this trigger then calls TerminateJob.

A timeout is the trigger's own `deadline`: the scheduler's trigger timeout resumes the task
without calling `on_kill`, and `dag.test()` ignores it, so the trigger terminates the job itself
and fires a TIMEOUT event.
"""
from __future__ import annotations

import asyncio
import time
from typing import Any, AsyncIterator

from airflow.providers.amazon.aws.hooks.batch_client import BatchClientHook
from airflow.triggers.base import BaseTrigger, TriggerEvent

ENDED = ("SUCCEEDED", "FAILED")
TIMEOUT = "TIMEOUT"


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
    """

    def __init__(self, job_id: str, aws_conn_id: str | None = "aws_default", region_name: str | None = None,
                 poll_interval: float = 10, terminate_on_kill: bool = True, deadline: float | None = None):
        super().__init__()
        self.job_id = job_id
        self.aws_conn_id = aws_conn_id
        self.region_name = region_name
        self.poll_interval = poll_interval
        self.terminate_on_kill = terminate_on_kill
        self.deadline = deadline

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return ("operators.kit.triggers.BatchJobWaitTrigger", {
            "job_id": self.job_id, "aws_conn_id": self.aws_conn_id, "region_name": self.region_name,
            "poll_interval": self.poll_interval, "terminate_on_kill": self.terminate_on_kill,
            "deadline": self.deadline,
        })

    def hook(self) -> BatchClientHook:
        return BatchClientHook(aws_conn_id=self.aws_conn_id, region_name=self.region_name)

    #: The least time between the trigger's start and its event. A trigger that fires before the scheduler has
    #: handled the deferring try's exit (a job that ends at once) lets Airflow's scheduler take that exit for the
    #: resumed try's end and send the task to retry (apache/airflow#66374, #72716).
    settle_s = 5.0

    async def run(self) -> AsyncIterator[TriggerEvent]:
        last = None
        started = time.monotonic()
        async with await self.hook().get_async_conn() as client:
            while True:
                jobs = (await client.describe_jobs(jobs=[self.job_id]))["jobs"]
                if not jobs:
                    yield TriggerEvent({"job_id": self.job_id, "status": "MISSING",
                                        "reason": f"AWS Batch job {self.job_id} not found"})
                    return
                job = jobs[0]
                progress = progress_line(job)
                if progress != last:
                    self.log.info("AWS Batch job %s: %s", self.job_id, progress)
                    last = progress
                if job["status"] in ENDED:
                    await asyncio.sleep(max(0.0, self.settle_s - (time.monotonic() - started)))
                    yield TriggerEvent({"job_id": self.job_id, "status": job["status"],
                                        "reason": job.get("statusReason", "")})
                    return
                if self.deadline is not None and time.time() >= self.deadline:
                    reason = f"the shard's timeout passed while AWS Batch job {self.job_id} was {job['status']}"
                    if self.terminate_on_kill:
                        self.log.warning("%s: terminating it", reason)
                        await client.terminate_job(jobId=self.job_id, reason="Airflow shard timeout")
                    yield TriggerEvent({"job_id": self.job_id, "status": TIMEOUT, "reason": reason})
                    return
                remaining = self.deadline - time.time() if self.deadline is not None else self.poll_interval
                await asyncio.sleep(max(0.0, min(self.poll_interval, remaining)))

    async def on_kill(self) -> None:
        if not self.terminate_on_kill:
            return
        self.log.info("Task killed while deferred: terminating AWS Batch job %s", self.job_id)
        try:
            async with await self.hook().get_async_conn() as client:
                await client.terminate_job(jobId=self.job_id, reason="Airflow task killed while deferred")
        except Exception:
            self.log.exception("Could not terminate AWS Batch job %s; it may still be running", self.job_id)
