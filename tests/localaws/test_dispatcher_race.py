"""Job state under concurrent API calls: describing or listing jobs never changes what they become."""
from __future__ import annotations

import sys
import threading
import time
import uuid

import boto3
import pytest

ARRAYS = 30
CHILDREN = 8
DEADLINE_S = 600
#: a parent whose children have all ended must end too; this long after, it is stuck
SETTLE_S = 60


@pytest.fixture(scope="module")
def race_queue(local_aws) -> str:
    iam = boto3.client("iam", **local_aws.client_kwargs)
    role = iam.create_role(RoleName=f"race-{uuid.uuid4().hex[:6]}", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    name = f"race-{uuid.uuid4().hex[:6]}"
    local_aws.batch.create_compute_environment(computeEnvironmentName=name, type="UNMANAGED", unmanagedvCpus=4,
                                               serviceRole=role, state="ENABLED")
    local_aws.batch.create_job_queue(jobQueueName=name, state="ENABLED", priority=1,
                                     computeEnvironmentOrder=[{"order": 1, "computeEnvironment": name}])
    return name


@pytest.fixture
def fine_thread_switching():
    """Switch threads far more often than every 5 ms, so that API and watcher threads interleave inside calls."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    yield
    sys.setswitchinterval(interval)


@pytest.mark.slow
def test_parents_end_while_describe_and_list_jobs_poll_hard(local_aws, race_queue, fine_thread_switching):
    batch = local_aws.batch
    definition = f"race-{uuid.uuid4().hex[:6]}"
    batch.register_job_definition(jobDefinitionName=definition, type="container", containerProperties={
        "image": "unused:1", "command": ["true"],
        "resourceRequirements": [{"type": "VCPU", "value": "1"}, {"type": "MEMORY", "value": "64"}]})
    # the arrays queue behind a job that fills the environment, so that polling is under way when they run
    batch.submit_job(jobName="race-gate", jobQueue=race_queue, jobDefinition=definition, containerOverrides={
        "command": ["sleep", "3"], "resourceRequirements": [{"type": "VCPU", "value": "4"}]})
    parents = [batch.submit_job(jobName=f"race-{i}", jobQueue=race_queue, jobDefinition=definition,
                                arrayProperties={"size": CHILDREN})["jobId"] for i in range(ARRAYS)]

    stop = threading.Event()
    errors: list[BaseException] = []

    def poll(call) -> None:
        client = boto3.client("batch", **local_aws.client_kwargs)
        try:
            while not stop.is_set():
                call(client)
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)

    describers = [lambda c: c.describe_jobs(jobs=parents)] * 3
    listers = [lambda c: c.list_jobs(jobQueue=race_queue, jobStatus="RUNNING"),
               lambda c: [c.list_jobs(arrayJobId=p) for p in parents[:5]]]
    threads = [threading.Thread(target=poll, args=(call,), daemon=True) for call in describers + listers]
    for thread in threads:
        thread.start()
    try:
        deadline = time.monotonic() + DEADLINE_S
        ended: dict[str, dict] = {}
        children_done_at: dict[str, float] = {}
        stuck: dict[str, dict] = {}
        while time.monotonic() < deadline and len(ended) + len(stuck) < ARRAYS:
            waiting = [p for p in parents if p not in ended and p not in stuck]
            for job in batch.describe_jobs(jobs=waiting)["jobs"]:
                assert "arrayProperties" in job, f"array parent described without its children: {job}"
                summary = job["arrayProperties"]["statusSummary"]
                if job["status"] in ("SUCCEEDED", "FAILED"):
                    ended[job["jobId"]] = job
                elif summary["SUCCEEDED"] + summary["FAILED"] == CHILDREN:
                    since = children_done_at.setdefault(job["jobId"], time.monotonic())
                    if time.monotonic() - since > SETTLE_S:
                        stuck[job["jobId"]] = job
            time.sleep(0.2)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
    assert not errors, errors
    assert not stuck, {p: (j["status"], j["arrayProperties"]["statusSummary"]) for p, j in stuck.items()}
    assert len(ended) == ARRAYS, f"{ARRAYS - len(ended)} parents still running after {DEADLINE_S}s"
    for job in ended.values():
        summary = job["arrayProperties"]["statusSummary"]
        assert job["status"] == "SUCCEEDED", (job["jobId"], job.get("statusReason"))
        assert summary["SUCCEEDED"] == CHILDREN and sum(summary.values()) == CHILDREN, summary
