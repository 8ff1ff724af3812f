"""The house BatchOperator: the provider's operator with this project's defaults and diagnostics.

Each default has its reason next to it. DAG files pass only what differs per pipeline.
"""
from __future__ import annotations

import time
from typing import Any

from airflow.providers.amazon.aws.hooks.logs import AwsLogsHook
from airflow.providers.amazon.aws.operators.batch import BatchOperator
from airflow.sdk.exceptions import AirflowException

ENDED = ("SUCCEEDED", "FAILED")
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

    @staticmethod
    def progress_line(job: dict[str, Any]) -> str:
        summary = job.get("arrayProperties", {}).get("statusSummary")
        if not summary:
            return job["status"]
        counts = ", ".join(f"{n} {s}" for s, n in sorted(summary.items()) if n)
        return f"{job['status']} (children: {counts or 'none yet'})"

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
