"""The provisioning spec, applied to the local endpoint (UNMANAGED) and rendered for AWS (MANAGED)."""
from __future__ import annotations

import boto3
import pytest

from operators.kit import provisioning
from operators.kit.provisioning import ProvisioningError, Settings


def test_apply_is_idempotent_and_updates_what_changed(local_aws):
    iam = boto3.client("iam", **local_aws.client_kwargs)
    spec = provisioning.load_spec()
    settings = Settings.from_env({"BATCH_LOCAL_VCPUS": "2"})
    again = provisioning.apply(local_aws.batch, iam, spec, settings)  # the fixture applied it once already
    assert again["created"] == [] and again["updated"] == []
    ces = {c["computeEnvironmentName"]: c for c in local_aws.batch.describe_compute_environments()["computeEnvironments"]}
    assert ces["airbatch-gpu"]["type"] == "UNMANAGED" and ces["airbatch-gpu"]["unmanagedvCpus"] == 2
    gpu = local_aws.batch.describe_job_definitions(jobDefinitionName="airbatch-worker-gpu", status="ACTIVE")["jobDefinitions"]
    requirements = {r["type"]: r["value"] for r in gpu[-1]["containerProperties"]["resourceRequirements"]}
    assert requirements["GPU"] == "1"
    queues = {q["jobQueueName"] for q in local_aws.batch.describe_job_queues()["jobQueues"]}
    assert {"airbatch-cpu", "airbatch-gpu"} <= queues

    changed = dict(spec, job_definitions={**spec["job_definitions"],
                                          "airbatch-worker-cpu": {**spec["job_definitions"]["airbatch-worker-cpu"], "memory_mib": 4096}})
    result = provisioning.apply(local_aws.batch, iam, changed, settings)
    assert [u for u in result["updated"] if u.startswith("job-definition/airbatch-worker-cpu:")]
    restored = provisioning.apply(local_aws.batch, iam, spec, settings)
    assert [u for u in restored["updated"] if u.startswith("job-definition/airbatch-worker-cpu:")]
    assert provisioning.apply(local_aws.batch, iam, spec, settings)["updated"] == []


def test_managed_requests_use_spot_gpu_instances_and_need_network_settings():
    spec = provisioning.load_spec()
    with pytest.raises(ProvisioningError, match="BATCH_SUBNETS, BATCH_SECURITY_GROUPS, BATCH_INSTANCE_ROLE"):
        Settings.from_env({"BATCH_ENV_TYPE": "MANAGED"})
    settings = Settings.from_env({"BATCH_ENV_TYPE": "MANAGED", "BATCH_SUBNETS": "subnet-1,subnet-2",
                                  "BATCH_SECURITY_GROUPS": "sg-1", "BATCH_INSTANCE_ROLE": "ecsInstanceRole",
                                  "DATA_ROOT": "s3://team-data/airbatch"})
    gpu = provisioning.compute_environment_request("airbatch-gpu", spec["compute_environments"]["airbatch-gpu"], settings, "arn:role")
    assert gpu["type"] == "MANAGED"
    resources = gpu["computeResources"]
    assert resources["type"] == "SPOT" and all(t.startswith(("g5", "g6")) for t in resources["instanceTypes"])
    assert resources["subnets"] == ["subnet-1", "subnet-2"] and resources["ec2Configuration"][0]["imageType"].endswith("NVIDIA")
    cpu = provisioning.compute_environment_request("airbatch-cpu", spec["compute_environments"]["airbatch-cpu"], settings, "arn:role")
    assert "ec2Configuration" not in cpu["computeResources"]


def test_retry_strategy_retries_spot_and_capacity_and_exits_on_application_errors():
    from localaws.batch import retry_decision

    strategy = provisioning.load_spec()["retry_strategy"]
    assert len(strategy["evaluateOnExit"]) <= 5 and strategy["evaluateOnExit"][-1] == {"onReason": "*", "action": "EXIT"}
    spot = {"statusReason": "Host EC2 (instance i-0abc) terminated.", "container": {}}
    pull = {"statusReason": "Task failed to start", "container": {"reason": "CannotPullContainerError: timeout"}}
    transient = {"statusReason": "Essential container in task exited", "container": {"exitCode": 75}}
    bad_data = {"statusReason": "Essential container in task exited", "container": {"exitCode": 65}}
    assert retry_decision(strategy, 1, spot) and retry_decision(strategy, 1, pull) and retry_decision(strategy, 1, transient)
    assert not retry_decision(strategy, 1, bad_data)


def test_settings_refuse_unpinned_images_and_unknown_types():
    with pytest.raises(ProvisioningError, match="pinned tag"):
        Settings.from_env({"WORKER_IMAGE": "123.dkr.ecr.us-east-1.amazonaws.com/worker:latest"})
    with pytest.raises(ProvisioningError, match="UNMANAGED or MANAGED"):
        Settings.from_env({"BATCH_ENV_TYPE": "FARGATE"})


def test_every_job_definition_runs_as_a_least_privilege_job_role(local_aws):
    iam = boto3.client("iam", **local_aws.client_kwargs)
    spec = provisioning.load_spec()
    role_name = spec["job_role"]["name"]
    on_s3 = Settings.from_env({"BATCH_LOCAL_VCPUS": "2", "DATA_ROOT": "s3://team-data/airbatch"})
    try:
        result = provisioning.apply(local_aws.batch, iam, spec, on_s3)
        assert f"role/{role_name}" in result["updated"]
        role = iam.get_role(RoleName=role_name)["Role"]
        trust = provisioning._document(role["AssumeRolePolicyDocument"])
        assert [s["Principal"] for s in trust["Statement"]] == [{"Service": "ecs-tasks.amazonaws.com"}]
        for name in spec["job_definitions"]:
            [latest] = [d for d in local_aws.batch.describe_job_definitions(jobDefinitionName=name, status="ACTIVE")
                        ["jobDefinitions"] if d["revision"] == max(x["revision"] for x in local_aws.batch.describe_job_definitions(
                            jobDefinitionName=name, status="ACTIVE")["jobDefinitions"])]
            assert latest["containerProperties"]["jobRoleArn"] == role["Arn"]
        policy = provisioning._document(iam.get_role_policy(RoleName=role_name, PolicyName=provisioning.JOB_ROLE_POLICY_NAME)
                                        ["PolicyDocument"])
        grants = {(action, resource) for statement in policy["Statement"] for action in statement["Action"]
                  for resource in statement["Resource"]}
        assert grants == {
            ("s3:GetObject", "arn:aws:s3:::team-data/airbatch/runs/*"),
            ("s3:GetObject", "arn:aws:s3:::team-data/airbatch/published/*"),
            ("s3:GetObject", "arn:aws:s3:::team-data/airbatch/outputs/*"),
            ("s3:PutObject", "arn:aws:s3:::team-data/airbatch/outputs/*"),
            ("s3:DeleteObject", "arn:aws:s3:::team-data/airbatch/outputs/*"),
            ("s3:ListBucket", "arn:aws:s3:::team-data"),
        }
        assert all(statement["Effect"] == "Allow" for statement in policy["Statement"])
        listing = next(s for s in policy["Statement"] if s["Action"] == ["s3:ListBucket"])
        assert listing["Condition"]["StringLike"]["s3:prefix"] == ["airbatch/runs/*", "airbatch/published/*", "airbatch/outputs/*"]
        again = provisioning.apply(local_aws.batch, iam, spec, on_s3)
        assert again["created"] == [] and again["updated"] == []
    finally:
        provisioning.apply(local_aws.batch, iam, spec, Settings.from_env({"BATCH_LOCAL_VCPUS": "2"}))
    with pytest.raises(iam.exceptions.NoSuchEntityException):  # a local data root: nothing on S3 to grant
        iam.get_role_policy(RoleName=role_name, PolicyName=provisioning.JOB_ROLE_POLICY_NAME)


def test_managed_needs_an_s3_data_root_for_the_job_role():
    managed = {"BATCH_ENV_TYPE": "MANAGED", "BATCH_SUBNETS": "subnet-1", "BATCH_SECURITY_GROUPS": "sg-1",
               "BATCH_INSTANCE_ROLE": "ecsInstanceRole"}
    with pytest.raises(ProvisioningError, match="DATA_ROOT .*s3://bucket/prefix"):
        Settings.from_env({**managed, "DATA_ROOT": "/srv/data"})
    settings = Settings.from_env({**managed, "DATA_ROOT": "/srv/data", "BATCH_DATA_ROOT": "s3://bucket"})
    policy = provisioning.job_role_policy(provisioning.load_spec()["job_role"], settings.data_root)
    assert policy["Statement"][0]["Resource"] == ["arn:aws:s3:::bucket/runs/*", "arn:aws:s3:::bucket/published/*"]
    assert not [a for s in policy["Statement"] for a in s["Action"] if not a.startswith("s3:")]
