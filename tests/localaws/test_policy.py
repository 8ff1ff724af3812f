"""The job key pair can do what the job role's policy allows, per S3 prefix, and nothing else.

The endpoint runs in a process of its own with DATA_ROOT=s3://data-bucket/team, so provisioning gives
the job role the policy it gives on AWS; each call below is signed with the job key pair, as a job's are.
"""
from __future__ import annotations

import os

import boto3
import botocore.exceptions
import pytest
import s3fs

from localaws import policy
from operators.kit.provisioning import job_role_policy, load_spec
from tests.localaws.test_guard import Served

BUCKET, PREFIX = "data-bucket", "team"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("policy")
    env = {name: os.environ[name] for name in ("PATH", "HOME", "LANG") if name in os.environ}
    env.update(BATCH_LOCAL_VCPUS="2", DATA_ROOT=f"s3://{BUCKET}/{PREFIX}")
    endpoint = Served(tmp_path / "credentials.json", env, tmp_path / "endpoint.log")
    client = endpoint.client("s3")
    client.create_bucket(Bucket=BUCKET)
    for key in ("runs/r/batch.csv", "published/pricing/model.parquet", "registry/current.json", "outputs/w/old"):
        client.put_object(Bucket=BUCKET, Key=f"{PREFIX}/{key}", Body=b"client's " + key.encode())
    yield endpoint
    endpoint.stop()


def job_client(served: Served, service: str):
    return served.client(service, served.credentials.job)


def code(call) -> str:
    with pytest.raises(botocore.exceptions.ClientError) as refused:
        call()
    return refused.value.response["Error"]["Code"]


def test_the_job_key_reads_and_writes_only_what_the_role_allows(served):
    s3 = job_client(served, "s3")
    key = lambda name: f"{PREFIX}/{name}"  # noqa: E731
    assert s3.get_object(Bucket=BUCKET, Key=key("runs/r/batch.csv"))["Body"].read() == b"client's runs/r/batch.csv"
    assert s3.get_object(Bucket=BUCKET, Key=key("published/pricing/model.parquet"))["Body"].read()
    s3.put_object(Bucket=BUCKET, Key=key("outputs/w/new"), Body=b"job's")
    s3.copy_object(Bucket=BUCKET, Key=key("outputs/w/copy"), CopySource={"Bucket": BUCKET, "Key": key("runs/r/batch.csv")})
    s3.delete_object(Bucket=BUCKET, Key=key("outputs/w/old"))
    listed = s3.list_objects_v2(Bucket=BUCKET, Prefix=key("runs/"))["Contents"]
    assert [item["Key"] for item in listed] == [key("runs/r/batch.csv")]

    assert code(lambda: s3.put_object(Bucket=BUCKET, Key=key("runs/r/batch.csv"), Body=b"forged")) == "AccessDenied"
    assert code(lambda: s3.put_object(Bucket=BUCKET, Key=key("published/pricing/model.parquet"), Body=b"x")) == "AccessDenied"
    assert code(lambda: s3.delete_object(Bucket=BUCKET, Key=key("published/pricing/model.parquet"))) == "AccessDenied"
    assert code(lambda: s3.get_object(Bucket=BUCKET, Key=key("registry/current.json"))) == "AccessDenied"
    assert code(lambda: s3.put_object(Bucket=BUCKET, Key="elsewhere/outputs/x", Body=b"x")) == "AccessDenied"
    assert code(lambda: s3.list_objects_v2(Bucket=BUCKET)) == "AccessDenied"
    assert code(lambda: s3.list_objects_v2(Bucket=BUCKET, Prefix=key("registry/"))) == "AccessDenied"
    assert code(lambda: s3.list_buckets()) == "AccessDenied"
    assert code(lambda: s3.copy_object(Bucket=BUCKET, Key=key("outputs/w/stolen"),
                                       CopySource={"Bucket": BUCKET, "Key": key("registry/current.json")})) == "AccessDenied"
    assert code(lambda: s3.put_bucket_policy(Bucket=BUCKET, Policy="{}")) == "AccessDenied"
    assert code(lambda: s3.put_object_acl(Bucket=BUCKET, Key=key("outputs/w/new"), ACL="public-read")) == "AccessDenied"
    # one forbidden key in a DeleteObjects call refuses the call: nothing is deleted
    assert code(lambda: s3.delete_objects(Bucket=BUCKET, Delete={"Objects": [
        {"Key": key("outputs/w/new")}, {"Key": key("published/pricing/model.parquet")}]})) == "AccessDenied"

    client = served.client("s3")
    assert client.get_object(Bucket=BUCKET, Key=key("runs/r/batch.csv"))["Body"].read() == b"client's runs/r/batch.csv"
    assert client.get_object(Bucket=BUCKET, Key=key("published/pricing/model.parquet"))["Body"].read()
    assert client.get_object(Bucket=BUCKET, Key=key("outputs/w/new"))["Body"].read() == b"job's"
    with pytest.raises(botocore.exceptions.ClientError):
        client.head_object(Bucket=BUCKET, Key=key("outputs/w/old"))


def test_the_worker_s_own_client_works_under_the_policy(served):
    """s3fs, as the worker reaches the data root: listing, reading, multipart writing under outputs/."""
    pair = served.credentials.job
    fs = s3fs.S3FileSystem(key=pair.access_key_id, secret=pair.secret_access_key, endpoint_url=served.url,
                           skip_instance_cache=True)
    assert fs.cat_file(f"{BUCKET}/{PREFIX}/runs/r/batch.csv") == b"client's runs/r/batch.csv"
    assert fs.ls(f"{BUCKET}/{PREFIX}/runs/r") == [f"{BUCKET}/{PREFIX}/runs/r/batch.csv"]
    data = os.urandom(6 << 20)
    with fs.open(f"{BUCKET}/{PREFIX}/outputs/big", "wb", block_size=5 << 20) as out:
        out.write(data)
    assert fs.cat_file(f"{BUCKET}/{PREFIX}/outputs/big") == data
    fs.rm(f"{BUCKET}/{PREFIX}/outputs/big")
    with pytest.raises(PermissionError):
        fs.pipe_file(f"{BUCKET}/{PREFIX}/runs/r/forged", b"x")


def test_the_job_key_writes_no_log_stream_and_calls_no_batch(served):
    logs = served.client("logs")
    logs.create_log_group(logGroupName="/aws/batch/job-probe")
    logs.create_log_stream(logGroupName="/aws/batch/job-probe", logStreamName="another-job")
    job_logs = job_client(served, "logs")
    assert code(lambda: job_logs.put_log_events(logGroupName="/aws/batch/job-probe", logStreamName="another-job",
                                                logEvents=[{"timestamp": 1, "message": "forged"}])) == "AccessDeniedException"
    assert code(lambda: job_client(served, "batch").describe_job_queues()) == "AccessDeniedException"
    assert job_client(served, "sts").get_caller_identity()["Account"]


def test_the_guard_enforces_the_policy_provisioning_writes():
    """One source: the document the endpoint reads is the one provisioning computes for AWS."""
    role = load_spec()["job_role"]
    document = job_role_policy(role, "s3://b/p")
    allowed = lambda action, resource, **context: policy.allowed(document, policy.Request(action, resource, context))  # noqa: E731
    assert allowed("s3:GetObject", "arn:aws:s3:::b/p/runs/x")
    assert allowed("s3:PutObject", "arn:aws:s3:::b/p/outputs/x")
    assert not allowed("s3:PutObject", "arn:aws:s3:::b/p/runs/x")
    assert not allowed("s3:GetObject", "arn:aws:s3:::b/p/registry/x")
    assert not allowed("s3:GetObject", "arn:aws:s3:::b/pother/runs/x")
    assert allowed("s3:ListBucket", "arn:aws:s3:::b", **{"s3:prefix": "p/runs/r/"})
    assert not allowed("s3:ListBucket", "arn:aws:s3:::b", **{"s3:prefix": "p/"})
    assert not allowed("s3:ListBucket", "arn:aws:s3:::b")  # no prefix: the condition cannot hold
    assert not allowed("logs:PutLogEvents", "*")
    assert allowed("sts:GetCallerIdentity", "*")
    assert not policy.allowed(None, policy.Request("s3:GetObject", "arn:aws:s3:::b/p/runs/x"))  # a local DATA_ROOT
    deny = {"Statement": [*document["Statement"], {"Effect": "Deny", "Action": "s3:*", "Resource": "arn:aws:s3:::b/p/runs/secret*"}]}
    assert not policy.allowed(deny, policy.Request("s3:GetObject", "arn:aws:s3:::b/p/runs/secret.csv"))


def test_s3_requests_map_to_their_actions():
    body = b"<Delete><Object><Key>p/outputs/a</Key></Object><Object><Key>p/runs/b</Key></Object></Delete>"
    assert [r.action for r in policy.s3_requests("POST", "/b", "delete", {}, lambda: body)] == ["s3:DeleteObject"] * 2
    assert policy.s3_requests("GET", "/b/p/k", "", {}, bytes)[0] == policy.Request("s3:GetObject", "arn:aws:s3:::b/p/k")
    assert policy.s3_requests("PUT", "/b/p/k", "partNumber=1&uploadId=u", {}, bytes)[0].action == "s3:PutObject"
    assert policy.s3_requests("GET", "/b/p/k", "tagging", {}, bytes)[0].action == "s3:GETObject?tagging"
    assert policy.s3_requests("GET", "/b", "list-type=2&prefix=p%2Fruns%2F", {}, bytes)[0].context == {"s3:prefix": "p/runs/"}
    copy = policy.s3_requests("PUT", "/b/p/outputs/k", "", {"x-amz-copy-source": "/b/p/registry/c%20d"}, bytes)
    assert copy[1] == policy.Request("s3:GetObject", "arn:aws:s3:::b/p/registry/c d")
    with pytest.raises(policy.NotAllowed, match="not XML"):
        policy.s3_requests("POST", "/b", "delete", {}, lambda: b"<unclosed")
