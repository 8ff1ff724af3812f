"""The kit's AWS Batch calls, and its reads of the jobs' CloudWatch logs: one hook.

`HouseBatchHook` is the provider's `BatchClientHook` (the house operator's `aws_hook_class`, made from the task's
connection and region) with the calls the operator, its trigger, the sweep's outcome and the run view make, each
answering in plain terms: a job's description or None when Batch does not know it, statuses by job id, the failed
children of an array job in index order, the tail of a job's log or None when it has none. The trigger's calls run
on one async client for its whole wait (`async_calls`).

Submitting stays the provider's (`BatchOperator.submit_job`), and so do its `check_job_success` and `terminate_job`
(which logs Batch's whole answer; `terminate` here does not).
"""
from __future__ import annotations

from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Iterable

from airflow.providers.amazon.aws.hooks.batch_client import BatchClientHook
from airflow.providers.amazon.aws.hooks.logs import AwsLogsHook

from operators.kit.job_states import FAILED

#: DescribeJobs takes up to this many job ids a call.
DESCRIBE_JOBS_MAX = 100
#: The CloudWatch log group of every Batch job's output.
JOB_LOG_GROUP = "/aws/batch/job"
#: TerminateJob's reason when a wait passes the shard's deadline (the task's and the trigger's alike).
SHARD_TIMEOUT_REASON = "Airflow shard timeout"


class HouseBatchHook(BatchClientHook):
    """The provider's Batch hook with the kit's calls."""

    def on_other_endpoint(self) -> bool:
        """Whether the connection sends Batch calls to an endpoint of its own (the local endpoint) rather than
        AWS's."""
        return bool(self.conn_config.get_service_endpoint_url("batch"))

    def describe_job(self, job_id: str) -> dict[str, Any] | None:
        """The job's description; None when Batch does not know it (never did, or no longer does)."""
        jobs = self.client.describe_jobs(jobs=[job_id])["jobs"]
        return jobs[0] if jobs else None

    def describe_jobs(self, job_ids: list[str]) -> list[dict[str, Any]]:
        """The descriptions of the jobs Batch knows among `job_ids` (DESCRIBE_JOBS_MAX ids a call)."""
        return [job for start in range(0, len(job_ids), DESCRIBE_JOBS_MAX)
                for job in self.client.describe_jobs(jobs=job_ids[start:start + DESCRIBE_JOBS_MAX])["jobs"]]

    def job_statuses(self, job_ids: list[str]) -> dict[str, str]:
        """Job id -> status, of the jobs Batch knows among `job_ids`."""
        return {job["jobId"]: job["status"] for job in self.describe_jobs(job_ids)}

    def describe_with_children(self, job_ids: Iterable[str]) -> list[dict[str, Any]]:
        """The descriptions of these jobs and, after them, of every child of each array job among them."""
        described: list[dict[str, Any]] = []
        pending = list(job_ids)
        while pending:
            chunk, pending = pending[:DESCRIBE_JOBS_MAX], pending[DESCRIBE_JOBS_MAX:]
            for job in self.client.describe_jobs(jobs=chunk)["jobs"]:
                described.append(job)
                size = job.get("arrayProperties", {}).get("size")
                if size:
                    pending.extend(f"{job['jobId']}:{i}" for i in range(int(size)))
        return described

    def failed_children(self, parent_id: str, more_than: int | None = None) -> list[dict[str, Any]]:
        """The FAILED children of an array job (ListJobs summaries), by array index. With `more_than`, the listing
        stops at the first page that brings their number past it (a page holds up to 100)."""
        failed: list[dict[str, Any]] = []
        for page in self.client.get_paginator("list_jobs").paginate(arrayJobId=parent_id, jobStatus=FAILED):
            failed.extend(page["jobSummaryList"])
            if more_than is not None and len(failed) > more_than:
                break
        return sorted(failed, key=lambda s: (s.get("arrayProperties") or {}).get("index", 0))

    def terminate(self, job_id: str, reason: str) -> None:
        """TerminateJob: the job and every array child end FAILED, running ones stopped."""
        self.client.terminate_job(jobId=job_id, reason=reason)

    def cancel(self, job_id: str, reason: str) -> None:
        """CancelJob: the children that have not started never will; started ones run on to their end."""
        self.client.cancel_job(jobId=job_id, reason=reason)

    def log_tail(self, stream: str, lines: int) -> list[str] | None:
        """The last `lines` messages of a job's log stream (in JOB_LOG_GROUP); None when there is no such stream."""
        logs = AwsLogsHook(aws_conn_id=self.aws_conn_id, region_name=self.region_name).conn
        try:
            events = logs.get_log_events(logGroupName=JOB_LOG_GROUP, logStreamName=stream, startFromHead=False,
                                         limit=lines)["events"]
        except logs.exceptions.ResourceNotFoundException:
            return None
        return [str(event.get("message", "")) for event in events]

    @asynccontextmanager
    async def async_calls(self) -> AsyncIterator[AsyncBatchCalls]:
        """The calls of a wait in the triggerer, on one async client for as long as the context lasts."""
        async with await self.get_async_conn() as client:
            yield AsyncBatchCalls(client)


class AsyncBatchCalls:
    """`HouseBatchHook`'s calls that a trigger makes, on an async client (`HouseBatchHook.async_calls`)."""

    def __init__(self, client):
        self.client = client

    async def describe_job(self, job_id: str) -> dict[str, Any] | None:
        jobs = (await self.client.describe_jobs(jobs=[job_id]))["jobs"]
        return jobs[0] if jobs else None

    async def terminate(self, job_id: str, reason: str) -> None:
        await self.client.terminate_job(jobId=job_id, reason=reason)
