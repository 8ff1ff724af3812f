"""The endpoint's guard, through the real endpoint over HTTP: who may call it, from where, and what a job gets."""
from __future__ import annotations

import http.client
import json
import os
import signal
import stat
import subprocess
import sys
import time
import uuid
from pathlib import Path

import boto3
import botocore.exceptions
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials as BotocoreCredentials

from localaws.credentials import Credentials, KeyPair
from localaws.server import free_port, wait_until_ready
from localaws.stack import REPO

PY = sys.executable
DESCRIBE_QUEUES = ("POST", "/v1/describejobqueues", "batch", b"{}", {"Content-Type": "application/json"})


def send(aws, method: str, path: str, service: str, body: bytes = b"", headers: dict | None = None,
         pair: KeyPair | None = None, host: str | None = None, sign: bool = True,
         after_signing: dict | None = None, send_body: bytes | None = None) -> tuple[int, dict, bytes]:
    """One raw HTTP request to the endpoint, signed (with `pair`, for `host`) as botocore signs."""
    host = host or f"127.0.0.1:{aws.port}"
    request = AWSRequest(method=method, url=f"http://{host}{path}", data=body, headers={"Host": host, **(headers or {})})
    if sign:
        pair = pair or aws.credentials.client
        SigV4Auth(BotocoreCredentials(pair.access_key_id, pair.secret_access_key), service, aws.region).add_auth(request)
    all_headers = {**dict(request.headers.items()), **(after_signing or {})}
    connection = http.client.HTTPConnection("127.0.0.1", aws.port, timeout=30)
    try:
        payload = body if send_body is None else send_body
        connection.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        for name, value in all_headers.items():
            connection.putheader(name, value)
        if "Content-Length" not in all_headers:
            connection.putheader("Content-Length", str(len(payload)))
        connection.endheaders(payload)
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def error_code(body: bytes) -> str:
    text = body.decode()
    if text.lstrip().startswith("{"):
        return json.loads(text)["__type"]
    return text.split("<Code>", 1)[1].split("</Code>", 1)[0]


# -- who may call --------------------------------------------------------------------------------

def test_a_correctly_signed_request_is_served(local_aws):
    status, _, body = send(local_aws, *DESCRIBE_QUEUES[:2], DESCRIBE_QUEUES[2], DESCRIBE_QUEUES[3], DESCRIBE_QUEUES[4])
    assert status == 200, body
    assert "airbatch-cpu" in {q["jobQueueName"] for q in json.loads(body)["jobQueues"]}


def test_unsigned_requests_are_refused(local_aws):
    method, path, service, body, headers = DESCRIBE_QUEUES
    status, _, answer = send(local_aws, method, path, service, body, headers, sign=False)
    assert status == 403 and error_code(answer) == "MissingAuthenticationToken"
    status, _, answer = send(local_aws, "GET", "/", "s3", sign=False)  # ListBuckets
    assert status == 403 and error_code(answer) == "MissingAuthenticationToken"
    presigned = "/?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=x%2F20260101%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Signature=00"
    status, _, answer = send(local_aws, "GET", presigned, "s3", sign=False)
    assert status == 403 and b"presigned" in answer


def test_unknown_keys_and_wrong_signatures_are_refused_for_every_service(local_aws):
    stranger = KeyPair("AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
    wrong_secret = KeyPair(local_aws.credentials.client.access_key_id, "not-the-secret")
    calls = {"batch": lambda c: c.describe_job_queues(), "s3": lambda c: c.list_buckets(),
             "iam": lambda c: c.list_roles(), "logs": lambda c: c.describe_log_groups(),
             "sns": lambda c: c.list_topics(), "sqs": lambda c: c.list_queues()}
    for service, call in calls.items():
        for pair, codes in ((stranger, {"InvalidClientTokenId", "InvalidAccessKeyId"}), (wrong_secret, {"SignatureDoesNotMatch"})):
            client = boto3.client(service, endpoint_url=local_aws.url, region_name=local_aws.region,
                                  aws_access_key_id=pair.access_key_id, aws_secret_access_key=pair.secret_access_key)
            with pytest.raises(botocore.exceptions.ClientError) as refused:
                call(client)
            assert refused.value.response["Error"]["Code"] in codes, (service, refused.value.response)
            assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403


def test_a_body_changed_after_signing_is_refused(local_aws):
    method, path, service, body, headers = DESCRIBE_QUEUES
    status, _, answer = send(local_aws, method, path, service, body, headers,
                             send_body=b'{"jobQueues":["airbatch-cpu"]}')
    assert status == 403 and error_code(answer) == "SignatureDoesNotMatch"


def test_the_job_key_pair_cannot_call_batch(local_aws):
    job = local_aws.credentials.job
    keys = dict(local_aws.client_kwargs, aws_access_key_id=job.access_key_id, aws_secret_access_key=job.secret_access_key)
    batch = boto3.client("batch", **keys)
    for call in (lambda: batch.describe_job_queues(),
                 lambda: batch.submit_job(jobName="from-a-job", jobQueue="airbatch-cpu", jobDefinition="airbatch-worker-cpu"),
                 lambda: batch.terminate_job(jobId="any", reason="from a job")):
        with pytest.raises(botocore.exceptions.ClientError) as refused:
            call()
        assert refused.value.response["Error"]["Code"] == "AccessDeniedException"
    local_aws.s3.create_bucket(Bucket="job-key-bucket")
    boto3.client("s3", **keys).put_object(Bucket="job-key-bucket", Key="k", Body=b"a job may write data")
    assert local_aws.s3.get_object(Bucket="job-key-bucket", Key="k")["Body"].read() == b"a job may write data"


def test_s3fs_and_the_providers_hooks_reach_the_endpoint_with_the_client_keys(local_aws):
    import asyncio

    import s3fs
    from airflow.providers.amazon.aws.hooks.batch_client import BatchClientHook

    local_aws.s3.create_bucket(Bucket="s3fs-bucket")
    fs = s3fs.S3FileSystem(key=local_aws.credentials.client.access_key_id,
                           secret=local_aws.credentials.client.secret_access_key, endpoint_url=local_aws.url)
    fs.pipe_file("s3fs-bucket/a b/c.bin", b"x" * 200_000)
    assert fs.cat_file("s3fs-bucket/a b/c.bin") == b"x" * 200_000 and fs.ls("s3fs-bucket/a b") == ["s3fs-bucket/a b/c.bin"]
    wrong = s3fs_with_wrong_secret(local_aws)
    with pytest.raises(PermissionError):
        wrong.cat_file("s3fs-bucket/a b/c.bin")

    hook = BatchClientHook(aws_conn_id="aws_default")  # the connection running_endpoint set up
    assert "airbatch-cpu" in {q["jobQueueName"] for q in hook.client.describe_job_queues()["jobQueues"]}

    async def through_aiobotocore() -> list[str]:
        async with await hook.get_async_conn() as client:
            return [q["jobQueueName"] for q in (await client.describe_job_queues())["jobQueues"]]

    assert "airbatch-cpu" in asyncio.run(through_aiobotocore())



def test_a_refused_head_request_gets_headers_only(local_aws):
    """A reply to HEAD carries no body: bytes after its headers would be read as the next reply."""
    import socket

    request = (f"HEAD /s3fs-head/x HTTP/1.1\r\nHost: 127.0.0.1:{local_aws.port}\r\n"
               f"Authorization: AWS4-HMAC-SHA256 Credential={local_aws.credentials.client.access_key_id}/"
               "20260101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=00\r\n\r\n")
    for path_request in (request, request.replace("/s3fs-head/x", "/_localaws/ready")):
        with socket.create_connection(("127.0.0.1", local_aws.port), timeout=30) as connection:
            connection.sendall(path_request.encode())
            reply = b""
            while chunk := connection.recv(65536):  # the endpoint closes the connection after an error
                reply += chunk
        head, _, rest = reply.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 ") and rest == b"", reply

    wrong = s3fs_with_wrong_secret(local_aws)
    for _ in range(20):  # each refusal is a HEAD (info) whose reply must parse
        with pytest.raises(PermissionError):
            wrong.info("s3fs-bucket/a b/c.bin")


def s3fs_with_wrong_secret(local_aws):
    import s3fs

    return s3fs.S3FileSystem(key=local_aws.credentials.client.access_key_id, secret="wrong",
                             endpoint_url=local_aws.url, skip_instance_cache=True)

# -- from where ------------------------------------------------------------------------------------

@pytest.mark.parametrize("host", ["attacker.example", "attacker.example:4566", "127.0.0.1.nip.io", "10.0.0.1",
                                  "localhost.attacker.example", "[::ffff:8.8.8.8]", "",
                                  "localhost:4612@evil.com", "127.0.0.1:80/evil", "localhost:99999", "[::1]evil",
                                  "localhost:", "127.0.0.1:4566:1"])
def test_a_host_that_is_not_loopback_is_refused_even_when_signed_for(local_aws, host):
    method, path, service, body, headers = DESCRIBE_QUEUES
    status, answer_headers, answer = send(local_aws, method, path, service, body, headers, host=host or None,
                                          after_signing={"Host": host} if not host else None)
    assert status == 403 and b"loopback" in answer, answer
    status, _, answer = send(local_aws, "GET", "/_localaws/ready", "s3", sign=False, host=host or None,
                             after_signing={"Host": host} if not host else None)
    assert status == 403


@pytest.mark.parametrize("host", ["127.0.0.1:{port}", "localhost:{port}", "127.0.0.2:{port}", "[::1]:{port}", "LOCALHOST"])
def test_loopback_host_names_are_accepted(local_aws, host):
    method, path, service, body, headers = DESCRIBE_QUEUES
    status, _, answer = send(local_aws, method, path, service, body, headers, host=host.format(port=local_aws.port))
    assert status == 200, answer


@pytest.mark.parametrize("browser_headers", [{"Origin": "https://attacker.example"}, {"Origin": "null"},
                                             {"Origin": "http://127.0.0.1:8080"}, {"Sec-Fetch-Site": "cross-site"},
                                             {"Sec-Fetch-Site": "same-site"}])
def test_cross_origin_browser_requests_are_refused_without_cors_headers(local_aws, browser_headers):
    method, path, service, body, headers = DESCRIBE_QUEUES
    status, answer_headers, _ = send(local_aws, method, path, service, body, headers, after_signing=browser_headers)
    assert status == 403
    assert not [h for h in answer_headers if h.startswith("access-control-")]
    preflight = {"Origin": "https://attacker.example", "Access-Control-Request-Method": "POST"}
    status, answer_headers, _ = send(local_aws, "OPTIONS", "/moto-api/reset", "s3", sign=False, after_signing=preflight)
    assert status == 403 and not [h for h in answer_headers if h.startswith("access-control-")]


def test_moto_api_routes_are_not_served_and_reset_deletes_nothing(local_aws):
    before = {q["jobQueueName"] for q in local_aws.batch.describe_job_queues()["jobQueues"]}
    for method, path in (("POST", "/moto-api/reset"), ("GET", "/moto-api/data.json"), ("GET", "/moto-api/"),
                         ("GET", "/moto-api/static/athena/query-results"), ("POST", "/moto-api/reset-auth")):
        for sign in (False, True):
            status, _, _ = send(local_aws, method, path, "s3", sign=sign)
            assert status == 404, (method, path, sign)
    assert {q["jobQueueName"] for q in local_aws.batch.describe_job_queues()["jobQueues"]} == before


def test_readiness_reveals_nothing(local_aws):
    status, headers, body = send(local_aws, "GET", "/_localaws/ready", "s3", sign=False)
    assert (status, body) == (200, b"ready")
    assert not [h for h in headers if h.startswith("access-control-")]


# -- what a job process gets, the credentials file, a restart --------------------------------------

CANARY = f"canary-{uuid.uuid4().hex}"
ENV_DUMP_SCRIPT = "import json, os; print(json.dumps(dict(os.environ)))"
JOB_CALLS_BATCH_SCRIPT = ("import boto3, botocore.exceptions\n"
                          "try:\n    boto3.client('batch').describe_job_queues(); print('batch: allowed')\n"
                          "except botocore.exceptions.ClientError as e:\n    print('batch:', e.response['Error']['Code'])\n")


class Served:
    """`python -m localaws serve` in a process of its own, with the environment given (Batch jobs start at once)."""

    def __init__(self, credentials: Path, env: dict[str, str], log: Path, *options: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.region = "us-east-1"
        self.log = log
        with open(log, "ab") as out:
            self.process = subprocess.Popen(
                [PY, "-m", "localaws", "serve", "--port", str(self.port), "--credentials", str(credentials),
                 "--start-seconds", "0", *options],
                cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_until_ready(self.url, timeout=180)
        except TimeoutError:
            self.stop()
            raise AssertionError(f"the endpoint did not start: {log.read_text()}")
        self.credentials = Credentials.load(credentials)

    def client(self, service: str, pair: KeyPair | None = None):
        pair = pair or self.credentials.client
        return boto3.client(service, endpoint_url=self.url, region_name=self.region,
                            aws_access_key_id=pair.access_key_id, aws_secret_access_key=pair.secret_access_key)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=30)


def run_job(served: Served, script: str) -> str:
    batch = served.client("batch")
    name = f"probe-{uuid.uuid4().hex[:6]}"
    batch.register_job_definition(jobDefinitionName=name, type="container", containerProperties={
        "image": "unused:1", "command": [PY, "-c", script],
        "environment": [{"name": "FROM_DEFINITION", "value": "d"}],
        "resourceRequirements": [{"type": "VCPU", "value": "1"}, {"type": "MEMORY", "value": "64"}]})
    job_id = batch.submit_job(jobName=name, jobQueue="airbatch-cpu", jobDefinition=name, containerOverrides={
        "environment": [{"name": "FROM_OVERRIDE", "value": "o"}]})["jobId"]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        job = batch.describe_jobs(jobs=[job_id])["jobs"][0]
        if job["status"] in ("SUCCEEDED", "FAILED"):
            break
        time.sleep(0.2)
    assert job["status"] == "SUCCEEDED", job
    events = served.client("logs").get_log_events(logGroupName="/aws/batch/job",
                                                  logStreamName=job["container"]["logStreamName"])["events"]
    return "\n".join(e["message"] for e in events)


def test_jobs_get_a_batch_environment_and_nothing_of_the_endpoints_and_a_restart_keeps_keys_and_definitions(tmp_path):
    credentials = tmp_path / "credentials.json"
    log = tmp_path / "endpoint.log"
    env = {name: os.environ[name] for name in ("PATH", "HOME", "LANG") if name in os.environ}
    env.update({
        "AIRFLOW_CONN_AWS_DEFAULT": json.dumps({"conn_type": "aws", "login": f"login-{CANARY}", "password": f"pw-{CANARY}"}),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"postgresql://airflow:db-{CANARY}@127.0.0.1/airflow",
        "SOME_TOKEN": f"token-{CANARY}", "BATCH_LOCAL_VCPUS": "2",
    })
    served = Served(credentials, env, log)
    try:
        assert stat.S_IMODE(credentials.stat().st_mode) == 0o600
        job_env = json.loads(run_job(served, ENV_DUMP_SCRIPT).splitlines()[0])
        assert CANARY not in json.dumps(job_env)
        assert set(job_env) <= {"PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION",
                                "AWS_REGION", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "FROM_DEFINITION",
                                "FROM_OVERRIDE", "LC_CTYPE"} | {k for k in job_env if k.startswith("AWS_BATCH_")}, job_env
        assert job_env["FROM_DEFINITION"] == "d" and job_env["FROM_OVERRIDE"] == "o"
        assert job_env["AWS_ACCESS_KEY_ID"] == served.credentials.job.access_key_id
        assert job_env["AWS_ENDPOINT_URL"] == served.url and job_env["PATH"].startswith(os.path.dirname(PY))
        assert run_job(served, JOB_CALLS_BATCH_SCRIPT).strip() == "batch: AccessDeniedException"
        client_keys = served.credentials.client
        revisions = {d["jobDefinitionName"]: d["revision"] for d in served.client("batch").describe_job_definitions(
            status="ACTIVE")["jobDefinitions"] if d["jobDefinitionName"].startswith("airbatch-")}
    finally:
        served.stop()
    assert served.process.returncode == 0, log.read_text()

    restarted = Served(credentials, env, log)
    try:
        assert restarted.credentials.client == client_keys
        batch = restarted.client("batch", client_keys)  # what a running Airflow still holds
        definitions = {d["jobDefinitionName"]: d["revision"] for d in batch.describe_job_definitions(
            status="ACTIVE")["jobDefinitions"]}
        assert {name: definitions.get(name) for name in revisions} == revisions == {
            "airbatch-worker-cpu": 1, "airbatch-worker-gpu": 1}
        assert {q["jobQueueName"] for q in batch.describe_job_queues()["jobQueues"]} >= {"airbatch-cpu", "airbatch-gpu"}
    finally:
        restarted.stop()
    written = log.read_text()
    for secret in (client_keys.secret_access_key, restarted.credentials.job.secret_access_key, CANARY):
        assert secret not in written


def test_an_unsafe_credentials_file_is_refused_with_the_fix(tmp_path):
    loose = tmp_path / "loose.json"
    Credentials.generate().write(loose)
    loose.chmod(0o644)
    link = tmp_path / "link.json"
    link.symlink_to(tmp_path / "elsewhere.json")
    Credentials.generate().write(tmp_path / "elsewhere.json")
    cases = [(loose, "mode is 0644"), (link, "symbolic link"), (tmp_path, "not a regular file")]
    if os.getuid() == 0:
        foreign = tmp_path / "foreign.json"
        Credentials.generate().write(foreign)
        os.chown(foreign, 65534, -1)
        cases.append((foreign, "belongs to user id 65534"))
    for path, problem in cases:
        done = subprocess.run([PY, "-m", "localaws", "serve", "--port", "0", "--credentials", str(path)],
                              cwd=REPO, capture_output=True, text=True, timeout=120)
        assert done.returncode == 2, (path, done.stdout, done.stderr)
        assert str(path) in done.stderr and problem in done.stderr, done.stderr
    assert "chmod 600" in subprocess.run([PY, "-m", "localaws", "serve", "--port", "0", "--credentials", str(loose)],
                                         cwd=REPO, capture_output=True, text=True, timeout=120).stderr


def test_a_new_credentials_file_is_private_from_its_creation(tmp_path):
    previous = os.umask(0)  # the widest umask: the file must still be 0600
    try:
        path = tmp_path / "fresh.json"
        written = Credentials.load_or_create(path)
    finally:
        os.umask(previous)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert Credentials.load(path) == written
    assert written.client != written.job and written.client != Credentials.generate().client
    assert written.client.secret_access_key not in repr(written)
