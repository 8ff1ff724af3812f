"""The local endpoint's capacity conditions, set through the signed Batch API: no capacity, throttling, lost hosts."""
from __future__ import annotations

import sys
import time
import uuid

import pytest
from botocore.exceptions import ClientError

from localaws.batch import LOSE_HOSTS_TAG, LOST_HOST_REASON, THROTTLE_SUBMITS_TAG

from tests.operators.kit.batch_jobs import wait_for

PY = sys.executable


@pytest.fixture(scope="module")
def aws(local_aws):
    import boto3

    iam = boto3.client("iam", **local_aws.client_kwargs)
    role = iam.create_role(RoleName="capacity-batch-service", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    local_aws.batch.create_compute_environment(computeEnvironmentName="ce-capacity", type="UNMANAGED",
                                               unmanagedvCpus=2, serviceRole=role, state="ENABLED")
    local_aws.batch.create_job_queue(jobQueueName="q-capacity", state="ENABLED", priority=1,
                                     computeEnvironmentOrder=[{"order": 1, "computeEnvironment": "ce-capacity"}])
    return local_aws


def definition(aws, script: str = "print('ok')", **extra) -> str:
    name = f"jd-{uuid.uuid4().hex[:8]}"
    aws.batch.register_job_definition(jobDefinitionName=name, type="container", containerProperties={
        "image": "unused:1", "command": [PY, "-c", script],
        "resourceRequirements": [{"type": "VCPU", "value": "1"}, {"type": "MEMORY", "value": "256"}]}, **extra)
    return name


def queue_arn(aws, name: str) -> str:
    return aws.batch.describe_job_queues(jobQueues=[name])["jobQueues"][0]["jobQueueArn"]


def ce_arn(aws, name: str) -> str:
    return aws.batch.describe_compute_environments(computeEnvironments=[name])["computeEnvironments"][0][
        "computeEnvironmentArn"]


def test_a_disabled_environment_keeps_jobs_runnable_until_enabled(aws):
    aws.batch.update_compute_environment(computeEnvironment="ce-capacity", state="DISABLED")
    try:
        job_id = aws.batch.submit_job(jobName="no-capacity", jobQueue="q-capacity",
                                      jobDefinition=definition(aws))["jobId"]
        time.sleep(1.0)  # several dispatcher passes
        assert aws.batch.describe_jobs(jobs=[job_id])["jobs"][0]["status"] == "RUNNABLE"
        aws.batch.cancel_job(jobId=job_id, reason="capacity shortage")
        cancelled = wait_for(aws, job_id)
        assert cancelled["status"] == "FAILED" and cancelled["statusReason"] == "capacity shortage"
    finally:
        aws.batch.update_compute_environment(computeEnvironment="ce-capacity", state="ENABLED")
    job_id = aws.batch.submit_job(jobName="capacity-back", jobQueue="q-capacity", jobDefinition=definition(aws))["jobId"]
    assert wait_for(aws, job_id)["status"] == "SUCCEEDED"


def test_throttled_submissions_are_refused_then_accepted(aws):
    arn = queue_arn(aws, "q-capacity")
    aws.batch.tag_resource(resourceArn=arn, tags={THROTTLE_SUBMITS_TAG: "2"})
    jd = definition(aws)
    for _ in range(2):
        with pytest.raises(ClientError) as refused:
            aws.batch.submit_job(jobName="throttled", jobQueue="q-capacity", jobDefinition=jd)
        assert refused.value.response["Error"]["Code"] == "ClientException"
        assert "Too Many Requests" in str(refused.value)
    assert THROTTLE_SUBMITS_TAG not in aws.batch.list_tags_for_resource(resourceArn=arn)["tags"]
    job_id = aws.batch.submit_job(jobName="accepted", jobQueue="q-capacity", jobDefinition=jd)["jobId"]
    assert wait_for(aws, job_id)["status"] == "SUCCEEDED"


def test_a_lost_host_is_retried_by_the_retry_strategy(aws):
    aws.batch.tag_resource(resourceArn=ce_arn(aws, "ce-capacity"), tags={LOSE_HOSTS_TAG: "1"})
    job_id = aws.batch.submit_job(
        jobName="host-loss", jobQueue="q-capacity", jobDefinition=definition(aws, "import time; time.sleep(0.2)"),
        retryStrategy={"attempts": 2, "evaluateOnExit": [{"onStatusReason": "Host EC2*", "action": "RETRY"},
                                                          {"onReason": "*", "action": "EXIT"}]})["jobId"]
    job = wait_for(aws, job_id)
    assert job["status"] == "SUCCEEDED"
    assert [a["statusReason"] for a in job["attempts"]][0] == LOST_HOST_REASON and len(job["attempts"]) == 2
