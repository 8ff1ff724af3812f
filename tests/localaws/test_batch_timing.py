"""The local Batch in time, as AWS's: a start latency spread over SUBMITTED, PENDING, RUNNABLE and STARTING.

The session's endpoint starts jobs at once (start_seconds=0); each test here sets a latency for its
own jobs with `start_latency` and records their statuses with a `StatusRecorder`, as the endpoint's
dispatcher sets them (a poll would miss a status that lasts less than its interval on a busy machine).
The waits are bounded; the time assertions are lower bounds (a stage cannot end early), which a slow
machine cannot break.
"""
from __future__ import annotations

import contextlib
import json
import sys
import threading
import time
import uuid
from typing import Iterator

import boto3
import pytest

from localaws import batch as local_batch
from tests.localaws.test_batch import host_folder

PY = sys.executable
WALK = ["SUBMITTED", "PENDING", "RUNNABLE", "STARTING", "RUNNING", "SUCCEEDED"]


@contextlib.contextmanager
def start_latency(seconds: float) -> Iterator[None]:
    """The endpoint of this process starts jobs `seconds` after their submit while this lasts."""
    dispatcher = local_batch.dispatcher()
    before, dispatcher.start_seconds = getattr(dispatcher, "start_seconds", 0.0), seconds
    try:
        yield
    finally:
        dispatcher.start_seconds = before


class StatusRecorder:
    """Every status each job of the in-process endpoint takes, in order, as its dispatcher sets it.

    `seen[job_id]` holds (status, time.monotonic()) for each status: the status a job was created with
    at its createdAt, each later one when the dispatcher set it. Exact on any machine, where a client's
    poll of DescribeJobs misses a status shorter than its interval plus the time a busy machine keeps
    the poller from running (a job that runs for milliseconds is RUNNING for that long).
    """

    def __init__(self):
        self.seen: dict[str, list[tuple[str, float]]] = {}
        self._lock = threading.Lock()
        self._original = local_batch.ProcessJob.set_status

    def _record(self, job, before: str) -> None:
        with self._lock:
            history = self.seen.get(job.job_id)
            if history is None:  # created with `before` at createdAt; an array child is PENDING from its spawn
                created = job.job_created_at.timestamp() - (time.time() - time.monotonic())
                history = self.seen[job.job_id] = [(job.status if job.parent is not None else before, created)]
            if history[-1][0] != job.status:
                history.append((job.status, time.monotonic()))

    def statuses(self, job_id: str) -> list[str]:
        with self._lock:
            return [status for status, _ in self.seen.get(job_id, [])]

    def first(self, job_id: str, status: str) -> float:
        with self._lock:
            return next(at for seen, at in self.seen.get(job_id, []) if seen == status)

    def wait_ended(self, *job_ids: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(self.statuses(job_id)[-1:] in (["SUCCEEDED"], ["FAILED"]) for job_id in job_ids):
                return
            time.sleep(0.05)
        raise AssertionError(f"not ended in {timeout} s: {({j: self.statuses(j) for j in job_ids})}")

    def __enter__(self) -> "StatusRecorder":
        recorder, original = self, self._original

        def set_status(job, value: str) -> None:
            before = job.status
            original(job, value)
            recorder._record(job, before)

        local_batch.ProcessJob.set_status = set_status
        return self

    def __exit__(self, *exc_info) -> None:
        local_batch.ProcessJob.set_status = self._original


@pytest.fixture(scope="module")
def aws(local_aws):
    """The session's endpoint plus a compute environment of 2 vCPUs and one of 4, with their queues."""
    iam = boto3.client("iam", **local_aws.client_kwargs)
    suffix = uuid.uuid4().hex[:6]
    role = iam.create_role(RoleName=f"timing-{suffix}", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    local_aws.queues = {}
    for vcpus in (2, 4):
        name = f"timing-{vcpus}-{suffix}"
        local_aws.batch.create_compute_environment(computeEnvironmentName=name, type="UNMANAGED", unmanagedvCpus=vcpus,
                                                   serviceRole=role, state="ENABLED")
        local_aws.batch.create_job_queue(jobQueueName=name, state="ENABLED", priority=1,
                                         computeEnvironmentOrder=[{"order": 1, "computeEnvironment": name}])
        local_aws.queues[vcpus] = name
    return local_aws


def register(aws, script: str, vcpus: int = 1, folder=None) -> str:
    name = f"timing-{uuid.uuid4().hex[:8]}"
    aws.batch.register_job_definition(jobDefinitionName=name, type="container", containerProperties={
        "image": "unused:1", "command": [PY, "-c", script], **(host_folder(folder) if folder else {}),
        "resourceRequirements": [{"type": "VCPU", "value": str(vcpus)}, {"type": "MEMORY", "value": "64"}]})
    return name


def submit(aws, definition: str, vcpus_queue: int = 4, **kwargs) -> str:
    return aws.batch.submit_job(jobName=f"timing-{uuid.uuid4().hex[:8]}", jobQueue=aws.queues[vcpus_queue],
                                jobDefinition=definition, **kwargs)["jobId"]


def describe(aws, job_id: str) -> dict:
    return aws.batch.describe_jobs(jobs=[job_id])["jobs"][0]


def test_a_job_walks_every_status_and_its_process_starts_only_after_the_latency(aws, tmp_path):
    started = tmp_path / "started"
    definition = register(aws, f"import time; open({str(started)!r}, 'w').write(repr(time.time())); time.sleep(0.5)",
                          folder=tmp_path)
    with start_latency(3.0), StatusRecorder() as recorder:
        submitted = time.monotonic()
        job_id = submit(aws, definition)
        recorder.wait_ended(job_id, timeout=60)
    assert recorder.statuses(job_id) == WALK
    assert recorder.first(job_id, "RUNNING") - submitted >= 2.7
    job = describe(aws, job_id)
    # the endpoint's own clock: RUNNING (startedAt) no sooner than the latency after the submit (createdAt)
    assert job["startedAt"] - job["createdAt"] >= 2900
    assert float(started.read_text()) * 1000 >= job["createdAt"] + 2900  # the process too
    assert job["attempts"][0]["startedAt"] == job["startedAt"] <= job["stoppedAt"]


def test_each_stage_before_running_takes_its_share_of_the_latency(aws):
    definition = register(aws, "pass")
    with start_latency(2.0), StatusRecorder() as recorder:
        job_id = submit(aws, definition)
        recorder.wait_ended(job_id, timeout=60)
    assert recorder.statuses(job_id) == WALK
    at = dict(recorder.seen[job_id])
    # lower bounds only: SUBMITTED and PENDING 0.4 s each, RUNNABLE 0.4 s, STARTING 0.8 s (less 0.1 s of polling)
    assert at["RUNNABLE"] - at["SUBMITTED"] >= 0.7
    assert at["STARTING"] - at["RUNNABLE"] >= 0.3
    assert at["RUNNING"] - at["STARTING"] >= 0.7


def test_an_array_parent_is_pending_while_its_children_walk_to_running(aws):
    definition = register(aws, "import time; time.sleep(1.0)")
    with start_latency(2.0), StatusRecorder() as recorder:
        parent = submit(aws, definition, arrayProperties={"size": 3})
        recorder.wait_ended(parent, timeout=60)
    ended = describe(aws, parent)
    # AWS: a parent goes PENDING when a child goes RUNNABLE and stays PENDING while children run
    assert recorder.statuses(parent) == ["SUBMITTED", "PENDING", "SUCCEEDED"]
    # a child is spawned PENDING by its parent
    assert recorder.statuses(f"{parent}:0") == recorder.statuses(f"{parent}:2") == WALK[1:]
    assert recorder.first(f"{parent}:0", "RUNNING") > recorder.first(parent, "PENDING")
    assert ended["arrayProperties"]["size"] == 3 and ended["arrayProperties"]["statusSummary"]["SUCCEEDED"] == 3


def test_a_job_takes_its_vcpus_when_it_leaves_runnable_and_holds_them_while_starting(aws):
    definition = register(aws, "import time; time.sleep(1.0)", vcpus=2)  # each fills the 2-vCPU environment
    with start_latency(2.0), StatusRecorder() as recorder:
        first, second = submit(aws, definition, vcpus_queue=2), submit(aws, definition, vcpus_queue=2)
        recorder.wait_ended(first, second, timeout=60)
    assert recorder.statuses(first) == recorder.statuses(second) == WALK
    # the second waits RUNNABLE while the first is STARTING (no process yet: its vCPUs are taken) and RUNNING
    assert recorder.first(second, "RUNNABLE") < recorder.first(first, "STARTING")
    assert recorder.first(second, "STARTING") >= recorder.first(first, "SUCCEEDED")
    first_job, second_job = describe(aws, first), describe(aws, second)
    assert second_job["startedAt"] >= first_job["stoppedAt"]


def test_terminating_a_starting_job_fails_it_and_frees_its_vcpus_cancel_leaves_it(aws):
    definition = register(aws, "import time; time.sleep(0.2)", vcpus=2)
    with start_latency(4.0), StatusRecorder() as recorder:
        job_id = submit(aws, definition, vcpus_queue=2)
        deadline = time.monotonic() + 30
        while "STARTING" not in recorder.statuses(job_id):
            assert time.monotonic() < deadline, recorder.statuses(job_id)
            time.sleep(0.02)
        aws.batch.cancel_job(jobId=job_id, reason="cancel leaves a STARTING job")  # as on AWS
        assert describe(aws, job_id)["status"] == "STARTING"
        aws.batch.terminate_job(jobId=job_id, reason="stopped while starting")
        job = describe(aws, job_id)
        assert job["status"] == "FAILED" and job["statusReason"] == "stopped while starting"
        assert job["isTerminated"] is True and "isCancelled" not in job
        assert job["attempts"] == [] and "startedAt" not in job
    with start_latency(0):  # its 2 vCPUs are free again: the next 2-vCPU job runs
        after = submit(aws, definition, vcpus_queue=2)
        deadline = time.monotonic() + 60
        while describe(aws, after)["status"] not in ("SUCCEEDED", "FAILED"):
            assert time.monotonic() < deadline
            time.sleep(0.05)
    assert describe(aws, after)["status"] == "SUCCEEDED"


def test_a_retried_attempt_walks_runnable_and_starting_again(aws):
    definition = register(aws, "import os, sys, time; time.sleep(0.3); "
                               "sys.exit(0 if os.environ['AWS_BATCH_JOB_ATTEMPT'] == '2' else 75)")
    with start_latency(1.0), StatusRecorder() as recorder:
        job_id = submit(aws, definition, retryStrategy={"attempts": 2})
        recorder.wait_ended(job_id, timeout=60)
    assert recorder.statuses(job_id) == [*WALK[:5], "RUNNABLE", "STARTING", "RUNNING", "SUCCEEDED"]
    job = describe(aws, job_id)
    assert [a["container"]["exitCode"] for a in job["attempts"]] == [75, 0]
    # the second attempt started no sooner than RUNNABLE's and STARTING's shares (0.2 + 0.4 s) after the first ended
    assert job["attempts"][1]["startedAt"] - job["attempts"][0]["stoppedAt"] >= 550


def test_without_latency_a_job_starts_at_once(aws):
    job_id = submit(aws, register(aws, "pass"))
    deadline = time.monotonic() + 30
    while (job := describe(aws, job_id))["status"] not in ("SUCCEEDED", "FAILED"):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert job["status"] == "SUCCEEDED" and job["startedAt"] - job["createdAt"] < 1000


def test_the_endpoint_reads_its_start_latency_from_the_environment_or_the_command_line(monkeypatch):
    from localaws.__main__ import main
    from localaws.server import DEFAULT_START_SECONDS, LocalAWS, start_seconds_setting

    monkeypatch.delenv("LOCALAWS_BATCH_START_SECONDS", raising=False)
    assert LocalAWS(port=0).start_seconds == DEFAULT_START_SECONDS == 3.0
    monkeypatch.setenv("LOCALAWS_BATCH_START_SECONDS", "1.5")
    assert LocalAWS(port=0).start_seconds == 1.5
    assert LocalAWS(port=0, start_seconds=0).start_seconds == 0
    for bad in ("soon", "-1", "nan"):
        with pytest.raises(ValueError, match="LOCALAWS_BATCH_START_SECONDS"):
            start_seconds_setting(bad)
    monkeypatch.setenv("LOCALAWS_BATCH_START_SECONDS", "later")
    assert main(["serve", "--port", "0", "--credentials", "/nonexistent/unused.json"]) == 2


def test_a_summary_says_what_aws_says_of_timing_fields(aws):
    """startedAt only once the job ran; a stopped job's exitCode and reason in ListJobs' container summary."""
    definition = register(aws, "import sys; sys.exit(3)")
    failed = submit(aws, definition)
    with start_latency(5.0):
        never_started = submit(aws, definition)
        aws.batch.cancel_job(jobId=never_started, reason="not needed")
    deadline = time.monotonic() + 60
    while describe(aws, failed)["status"] != "FAILED":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    summaries = {job["jobId"]: job for job in aws.batch.list_jobs(
        jobQueue=aws.queues[4], jobStatus="FAILED")["jobSummaryList"]}
    ran, cancelled = summaries[failed], summaries[never_started]
    assert ran["container"] == {"exitCode": 3} and ran["statusReason"] == "Essential container in task exited"
    assert ran["createdAt"] <= ran["startedAt"] <= ran["stoppedAt"]
    assert "startedAt" not in cancelled and "container" not in cancelled
    assert cancelled["statusReason"] == "not needed" and cancelled["isCancelled"] is True
    assert json.dumps(cancelled)  # plain JSON values only
