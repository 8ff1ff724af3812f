"""Apply `config/batch_resources.json` to AWS Batch, idempotently.

The same spec makes UNMANAGED compute environments on the local endpoint and MANAGED EC2/Spot
(GPU instance types for the GPU environment) on AWS; `BATCH_ENV_TYPE` chooses. Running `apply`
twice changes nothing the second time; a changed spec updates what differs (a new job definition
revision, a new capacity).

The same spec's `alarms` become CloudWatch alarms on the metrics every run publishes, with the SNS
topic they notify (`operators/kit/alarms.py`, docs/alarms.md).

Every job definition runs as a least-privilege job role (`job_role` in the spec): it may read the
batches and worklists and write the outputs under the data root (BATCH_DATA_ROOT, else DATA_ROOT,
when it is s3://bucket/prefix), nothing else, and no Batch call at all. Job logs reach CloudWatch
through the ECS agent (the instance role), not through the job role.

    python -m operators.kit.provisioning apply [--spec PATH]
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any

from operators.kit.batch_resources import DEFAULT_SPEC, load_spec

log = logging.getLogger(__name__)

BATCH_SERVICE_TRUST = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Principal": {"Service": "batch.amazonaws.com"}, "Action": "sts:AssumeRole"}],
}


ECS_TASKS_TRUST = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Principal": {"Service": "ecs-tasks.amazonaws.com"}, "Action": "sts:AssumeRole"}],
}
JOB_ROLE_POLICY_NAME = "airbatch-job-data-access"


class ProvisioningError(RuntimeError):
    pass


@dataclass
class Settings:
    """What differs between the local endpoint and an AWS account; read from the environment."""

    env_type: str  # UNMANAGED | MANAGED
    worker_image: str
    local_vcpus: int
    subnets: list[str]
    security_groups: list[str]
    instance_role: str | None
    service_role_arn: str | None
    data_root: str = ""  # where batches, worklists and outputs live: s3://bucket/prefix or a local folder

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> "Settings":
        env = dict(os.environ if env is None else env)
        env_type = env.get("BATCH_ENV_TYPE", "UNMANAGED").upper()
        if env_type not in ("UNMANAGED", "MANAGED"):
            raise ProvisioningError(f"BATCH_ENV_TYPE must be UNMANAGED or MANAGED, not {env_type!r}")
        settings = cls(
            env_type=env_type,
            worker_image=env.get("WORKER_IMAGE", "airbatch-worker:0.1.0"),
            local_vcpus=int(env.get("BATCH_LOCAL_VCPUS") or os.cpu_count() or 1),
            subnets=[s for s in env.get("BATCH_SUBNETS", "").split(",") if s],
            security_groups=[s for s in env.get("BATCH_SECURITY_GROUPS", "").split(",") if s],
            instance_role=env.get("BATCH_INSTANCE_ROLE") or None,
            service_role_arn=env.get("BATCH_SERVICE_ROLE_ARN") or None,
            data_root=env.get("BATCH_DATA_ROOT") or env.get("DATA_ROOT") or "",
        )
        if settings.worker_image.endswith(":latest") or ":" not in settings.worker_image.rsplit("/", 1)[-1]:
            raise ProvisioningError(f"WORKER_IMAGE must name a pinned tag, not {settings.worker_image!r}")
        if env_type == "MANAGED":
            missing = [name for name, value in (("BATCH_SUBNETS", settings.subnets),
                                                ("BATCH_SECURITY_GROUPS", settings.security_groups),
                                                ("BATCH_INSTANCE_ROLE", settings.instance_role)) if not value]
            if missing:
                raise ProvisioningError(f"MANAGED compute environments need {', '.join(missing)} in the environment")
            if not settings.data_root.startswith("s3://"):
                raise ProvisioningError(
                    f"MANAGED compute environments need DATA_ROOT (or BATCH_DATA_ROOT) as s3://bucket/prefix, not "
                    f"{settings.data_root!r}: the jobs' role is granted the batches, worklists and outputs under it")
        return settings


def compute_environment_request(name: str, ce: dict[str, Any], settings: Settings, role_arn: str) -> dict[str, Any]:
    request: dict[str, Any] = {"computeEnvironmentName": name, "state": "ENABLED", "serviceRole": role_arn,
                               "type": settings.env_type, "tags": {"project": "airbatch"}}
    if settings.env_type == "UNMANAGED":
        request["unmanagedvCpus"] = settings.local_vcpus
        return request
    resources: dict[str, Any] = {
        "type": ce.get("provisioning_model", "SPOT"),
        "allocationStrategy": ce.get("allocation_strategy", "SPOT_PRICE_CAPACITY_OPTIMIZED"),
        "minvCpus": 0,
        "maxvCpus": int(ce["max_vcpus"]),
        "instanceTypes": list(ce["instance_types"]),
        "subnets": settings.subnets,
        "securityGroupIds": settings.security_groups,
        "instanceRole": settings.instance_role,
    }
    if resources["type"] == "EC2":
        resources["allocationStrategy"] = "BEST_FIT_PROGRESSIVE"
    if ce.get("gpu"):
        resources["ec2Configuration"] = [{"imageType": "ECS_AL2023_NVIDIA"}]
    request["computeResources"] = resources
    return request


def job_role_policy(role: dict[str, Any], data_root: str) -> dict[str, Any] | None:
    """The job role's permissions on `data_root` (s3://bucket/prefix); None for a local folder."""
    if not data_root.startswith("s3://"):
        return None
    bucket, _, prefix = data_root.removeprefix("s3://").rstrip("/").partition("/")
    under = f"{prefix}/" if prefix else ""
    objects = lambda prefixes: [f"arn:aws:s3:::{bucket}/{under}{p}*" for p in prefixes]  # noqa: E731
    return {"Version": "2012-10-17", "Statement": [
        {"Sid": "ReadBatchesAndWorklists", "Effect": "Allow", "Action": ["s3:GetObject"],
         "Resource": objects(role["read_prefixes"])},
        {"Sid": "ReadAndWriteOutputs", "Effect": "Allow", "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"],
         "Resource": objects(role["write_prefixes"])},
        {"Sid": "ListTheDataRoot", "Effect": "Allow", "Action": ["s3:ListBucket"], "Resource": [f"arn:aws:s3:::{bucket}"],
         "Condition": {"StringLike": {"s3:prefix": [f"{under}{p}*" for p in role["read_prefixes"] + role["write_prefixes"]]}}},
    ]}


def ensure_job_role(iam, spec: dict[str, Any], settings: Settings, changes: dict[str, list[str]]) -> str:
    """Create or update the job role and its inline policy; its ARN."""
    name = spec["job_role"]["name"]
    created = updated = False
    try:
        current = iam.get_role(RoleName=name)["Role"]
        arn = current["Arn"]
        if _canonical(_document(current.get("AssumeRolePolicyDocument"))) != _canonical(ECS_TASKS_TRUST):
            iam.update_assume_role_policy(RoleName=name, PolicyDocument=json.dumps(ECS_TASKS_TRUST))
            updated = True
    except iam.exceptions.NoSuchEntityException:
        arn = iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(ECS_TASKS_TRUST),
                              Description="airbatch Batch jobs: read batches and worklists, write outputs",
                              Tags=[{"Key": "project", "Value": "airbatch"}])["Role"]["Arn"]
        created = True
    wanted = job_role_policy(spec["job_role"], settings.data_root)
    try:
        current_policy = _document(iam.get_role_policy(RoleName=name, PolicyName=JOB_ROLE_POLICY_NAME)["PolicyDocument"])
    except iam.exceptions.NoSuchEntityException:
        current_policy = None
    if _canonical(current_policy) != _canonical(wanted):
        if wanted is None:
            iam.delete_role_policy(RoleName=name, PolicyName=JOB_ROLE_POLICY_NAME)
        else:
            iam.put_role_policy(RoleName=name, PolicyName=JOB_ROLE_POLICY_NAME, PolicyDocument=json.dumps(wanted))
        updated = True
    changes["created" if created else "updated" if updated else "unchanged"].append(f"role/{name}")
    return arn


def _document(value: Any) -> Any:
    """A policy document as IAM returns it: a dict, or URL-encoded JSON."""
    return json.loads(urllib.parse.unquote(value)) if isinstance(value, str) else value


def job_definition_request(name: str, jd: dict[str, Any], spec: dict[str, Any], settings: Settings,
                           job_role_arn: str) -> dict[str, Any]:
    requirements = [{"type": "VCPU", "value": str(jd["vcpus"])}, {"type": "MEMORY", "value": str(jd["memory_mib"])}]
    if jd.get("gpus"):
        requirements.append({"type": "GPU", "value": str(jd["gpus"])})
    return {
        "jobDefinitionName": name,
        "type": "container",
        "parameters": {"worklist": "none"},
        "containerProperties": {
            "image": settings.worker_image,
            "command": list(spec["worker_command"]),
            "resourceRequirements": requirements,
            "environment": [{"name": "BATCH_WORKER_XP", "value": "auto"}],
            "jobRoleArn": job_role_arn,
        },
        "retryStrategy": spec["retry_strategy"],
        "timeout": {"attemptDurationSeconds": int(jd["attempt_timeout_s"])},
        "tags": {"project": "airbatch"},
    }


def _canonical(value: Any) -> Any:
    """Order- and case-insensitive form of a job definition part (AWS echoes `action` in lower case)."""
    if isinstance(value, dict):
        return {k: (v.upper() if k == "action" else _canonical(v)) for k, v in sorted(value.items())}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    return value


def _same_job_definition(existing: dict[str, Any], wanted: dict[str, Any]) -> bool:
    keys = ("image", "command", "resourceRequirements", "environment", "jobRoleArn")
    parts = lambda d: (  # noqa: E731
        {k: d.get("containerProperties", {}).get(k) for k in keys},
        d.get("retryStrategy"), d.get("timeout"), d.get("parameters", {}),
    )
    return _canonical(parts(existing)) == _canonical(parts(wanted))


def _wait_valid(batch, describe: str, key: str, names: list[str], timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while True:
        items = getattr(batch, describe)(**{key: names})[key]
        pending = [i for i in items if i.get("status") not in ("VALID", "INVALID")]
        invalid = [i for i in items if i.get("status") == "INVALID"]
        if invalid:
            raise ProvisioningError(f"{describe}: INVALID: {[(i.get('computeEnvironmentName') or i.get('jobQueueName'), i.get('statusReason')) for i in invalid]}")
        if not pending:
            return
        if time.monotonic() > deadline:
            raise ProvisioningError(f"{describe}: still not VALID after {timeout:.0f}s: {names}")
        time.sleep(5)


def apply(batch, iam, spec: dict[str, Any], settings: Settings, cloudwatch=None, sns=None) -> dict[str, list[str]]:
    """Create or update everything in `spec`. Returns what was created and updated, by kind.

    The alarms (`spec["alarms"]`) and their SNS topic go through `cloudwatch` and `sns`; without them, clients made
    like `batch` (its credentials, region and, when it is not AWS's, its endpoint)."""
    from operators.kit import alarms

    alarms.alarm_specs(spec)  # a bad alarm entry fails before anything is changed
    changes: dict[str, list[str]] = {"created": [], "updated": [], "unchanged": []}

    role_arn = settings.service_role_arn
    if role_arn is None:
        role_name = spec["service_role_name"]
        try:
            role_arn = iam.get_role(RoleName=role_name)["Role"]["Arn"]
            changes["unchanged"].append(f"role/{role_name}")
        except iam.exceptions.NoSuchEntityException:
            role_arn = iam.create_role(RoleName=role_name, AssumeRolePolicyDocument=json.dumps(BATCH_SERVICE_TRUST))["Role"]["Arn"]
            if settings.env_type == "MANAGED":
                iam.attach_role_policy(RoleName=role_name, PolicyArn="arn:aws:iam::aws:policy/service-role/AWSBatchServiceRole")
            changes["created"].append(f"role/{role_name}")

    existing_ces = {c["computeEnvironmentName"]: c for c in batch.describe_compute_environments()["computeEnvironments"]}
    for name, ce in spec["compute_environments"].items():
        wanted = compute_environment_request(name, ce, settings, role_arn)
        current = existing_ces.get(name)
        if current is None:
            batch.create_compute_environment(**wanted)
            changes["created"].append(f"compute-environment/{name}")
        elif current.get("type") != wanted["type"]:
            raise ProvisioningError(f"compute environment {name} is {current.get('type')}, the spec wants {wanted['type']}: delete it first")
        elif settings.env_type == "UNMANAGED" and current.get("unmanagedvCpus") != wanted["unmanagedvCpus"]:
            batch.update_compute_environment(computeEnvironment=name, unmanagedvCpus=wanted["unmanagedvCpus"])
            changes["updated"].append(f"compute-environment/{name}")
        elif settings.env_type == "MANAGED" and current.get("computeResources", {}).get("maxvCpus") != wanted["computeResources"]["maxvCpus"]:
            batch.update_compute_environment(computeEnvironment=name, computeResources={"maxvCpus": wanted["computeResources"]["maxvCpus"]})
            changes["updated"].append(f"compute-environment/{name}")
        else:
            changes["unchanged"].append(f"compute-environment/{name}")
    _wait_valid(batch, "describe_compute_environments", "computeEnvironments", list(spec["compute_environments"]))

    existing_queues = {q["jobQueueName"]: q for q in batch.describe_job_queues()["jobQueues"]}
    for name, queue in spec["job_queues"].items():
        order = [{"order": i + 1, "computeEnvironment": ce} for i, ce in enumerate(queue["compute_environments"])]
        current = existing_queues.get(name)
        if current is None:
            batch.create_job_queue(jobQueueName=name, state="ENABLED", priority=queue["priority"],
                                   computeEnvironmentOrder=order, tags={"project": "airbatch"})
            changes["created"].append(f"job-queue/{name}")
        else:
            current_ces = [o["computeEnvironment"].rsplit("/", 1)[-1] for o in sorted(current["computeEnvironmentOrder"], key=lambda o: o["order"])]
            if current_ces != queue["compute_environments"] or current.get("priority") != queue["priority"]:
                batch.update_job_queue(jobQueue=name, priority=queue["priority"], computeEnvironmentOrder=order)
                changes["updated"].append(f"job-queue/{name}")
            else:
                changes["unchanged"].append(f"job-queue/{name}")

    job_role_arn = ensure_job_role(iam, spec, settings, changes)
    for name, jd in spec["job_definitions"].items():
        wanted = job_definition_request(name, jd, spec, settings, job_role_arn)
        active = batch.describe_job_definitions(jobDefinitionName=name, status="ACTIVE")["jobDefinitions"]
        latest = max(active, key=lambda d: d["revision"], default=None)
        if latest is not None and _same_job_definition(latest, wanted):
            changes["unchanged"].append(f"job-definition/{name}:{latest['revision']}")
            continue
        revision = batch.register_job_definition(**wanted)["revision"]
        changes["created" if latest is None else "updated"].append(f"job-definition/{name}:{revision}")
    if alarms.alarm_specs(spec):
        if cloudwatch is None or sns is None:
            cloudwatch, sns = sibling_client(batch, "cloudwatch"), sibling_client(batch, "sns")
        alarms.provision(cloudwatch, sns, spec, changes)
    return changes


def sibling_client(client, service: str):
    """A boto3 client of `service` with `client`'s credentials and region, and its endpoint unless that is AWS's."""
    import boto3

    credentials = client._request_signer._credentials.get_frozen_credentials()
    endpoint = client.meta.endpoint_url
    from operators.kit.alarms import is_local_endpoint

    return boto3.client(service, region_name=client.meta.region_name,
                        endpoint_url=endpoint if is_local_endpoint(endpoint) else None,
                        aws_access_key_id=credentials.access_key, aws_secret_access_key=credentials.secret_key,
                        aws_session_token=credentials.token)


def clients(aws_conn_id: str = "aws_default"):
    """Batch and IAM clients from the Airflow connection, the same configuration the DAGs use."""
    from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook

    hook = AwsBaseHook(aws_conn_id=aws_conn_id, client_type="batch")
    session = hook.get_session()
    endpoint = hook.conn_config.endpoint_url
    return (hook.get_client_type(), session.client("iam", endpoint_url=endpoint))


def alarm_clients(aws_conn_id: str = "aws_default"):
    """CloudWatch and SNS clients from the Airflow connection (the ones the runs publish through)."""
    from operators.kit.alarms import clients as made

    cloudwatch, sns, _local = made(aws_conn_id)
    return cloudwatch, sns


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m operators.kit.provisioning")
    parser.add_argument("command", choices=["apply", "show"])
    parser.add_argument("--spec", default=str(DEFAULT_SPEC))
    args = parser.parse_args(argv)
    spec = load_spec(args.spec)
    settings = Settings.from_env()
    if args.command == "show":
        role = settings.service_role_arn or f"<role {spec['service_role_name']}>"
        shown = {
            "compute_environments": [compute_environment_request(n, c, settings, role) for n, c in spec["compute_environments"].items()],
            "job_definitions": [job_definition_request(n, j, spec, settings, f"<role {spec['job_role']['name']}>")
                                for n, j in spec["job_definitions"].items()],
            "job_role_policy": job_role_policy(spec["job_role"], settings.data_root),
        }
        print(json.dumps(shown, indent=2))
        return 0
    batch, iam = clients()
    cloudwatch, sns = alarm_clients()
    changes = apply(batch, iam, spec, settings, cloudwatch, sns)
    for kind in ("created", "updated", "unchanged"):
        if changes[kind]:
            print(f"{kind:>9}: {', '.join(changes[kind])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
