"""The endpoint's guard, through the real endpoint over HTTP: who may call it, from where, and what a job gets."""
from __future__ import annotations

import http.client
import io
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
    # nor touch data its role's policy does not grant (this endpoint's DATA_ROOT is local: it grants no S3 at all;
    # tests/localaws/test_policy.py has the s3:// case)
    local_aws.s3.create_bucket(Bucket="job-key-bucket")
    with pytest.raises(botocore.exceptions.ClientError) as refused:
        boto3.client("s3", **keys).put_object(Bucket="job-key-bucket", Key="k", Body=b"a job may not write here")
    assert refused.value.response["Error"]["Code"] == "AccessDenied"


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


@pytest.mark.slow
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


# -- the body: bound to the signature, read after it, limited --------------------------------------

def raw_exchange(port: int, head: str, body_parts: list[bytes] = (), half_close: bool = False) -> tuple[int, bytes]:
    """Send a request as raw bytes (the body as given, maybe cut short), then read the reply (head and body)."""
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=60) as connection:
        connection.sendall(head.encode())
        try:
            for part in body_parts:
                connection.sendall(part)
        except OSError:  # the endpoint answered and closed before it read the rest
            pass
        if half_close:
            connection.shutdown(socket.SHUT_WR)
        reply = b""
        # the reply ends after its Content-Length: the endpoint may still be reading (and dropping) what
        # the client sent past a refusal, waiting for the client to close
        while b"\r\n\r\n" not in reply or len(reply.partition(b"\r\n\r\n")[2]) < int(
                http.client.parse_headers(io.BytesIO(reply.partition(b"\r\n\r\n")[0].partition(b"\r\n")[2] + b"\r\n\r\n"))
                .get("Content-Length", "0")):
            chunk = connection.recv(65536)
            if not chunk:
                break
            reply += chunk
    return int(reply.split(b" ", 2)[1]), reply


def signed_head(aws, method: str, path: str, body: bytes, extra: dict | None = None, pair: KeyPair | None = None,
                payload_hash: str | None = None, zero_signature: bool = False) -> str:
    """The head of an S3 request signed as botocore signs one over http (the body's hash in x-amz-content-sha256)."""
    import hashlib

    host = f"127.0.0.1:{aws.port}"
    headers = {"Host": host, "x-amz-content-sha256": payload_hash or hashlib.sha256(body).hexdigest(), **(extra or {})}
    request = AWSRequest(method=method, url=f"http://{host}{path}", headers=headers)
    pair = pair or aws.credentials.client
    SigV4Auth(BotocoreCredentials(pair.access_key_id, pair.secret_access_key), "s3", aws.region).add_auth(request)
    lines = dict(request.headers.items())
    if zero_signature:
        lines["Authorization"] = lines["Authorization"].rsplit("Signature=", 1)[0] + "Signature=" + "0" * 64
    return f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in lines.items()) + "\r\n"


def chunked(data: bytes, size: int = 1 << 20) -> list[bytes]:
    parts = [b"%x\r\n%s\r\n" % (len(data[i:i + size]), data[i:i + size]) for i in range(0, len(data), size)]
    return [*parts, b"0\r\n\r\n"]


def test_a_body_over_the_limit_is_refused_before_it_is_read(local_aws):
    from localaws.guard import DEFAULT_MAX_BODY_BYTES, UNDECLARED_HASH_MAX_BYTES

    local_aws.s3.create_bucket(Bucket="limit-bucket")
    too_large = str(DEFAULT_MAX_BODY_BYTES + 1)
    head = signed_head(local_aws, "PUT", "/limit-bucket/big", b"", {"Content-Length": too_large},
                       payload_hash="0" * 64)
    started = time.monotonic()
    status, reply = raw_exchange(local_aws.port, head)  # no body sent at all: the answer comes from the head
    assert status == 413 and error_code(reply.partition(b"\r\n\r\n")[2]) == "EntityTooLarge", reply
    assert b"LOCALAWS_MAX_BODY_BYTES" in reply and b"multipart" in reply and time.monotonic() - started < 10
    # a body whose hash no signed header declares is read before its signature can be checked: only a small one
    method, path, service, body, headers = DESCRIBE_QUEUES
    status, _, answer = send(local_aws, method, path, service, body,
                             {**headers, "Content-Length": str(UNDECLARED_HASH_MAX_BYTES + 1)})
    assert status == 413 and error_code(answer) == "EntityTooLarge" and b"x-amz-content-sha256" in answer
    with pytest.raises(botocore.exceptions.ClientError):
        local_aws.s3.head_object(Bucket="limit-bucket", Key="big")


def test_a_chunked_body_is_read_to_its_end_and_limited(local_aws):
    from localaws.guard import UNDECLARED_HASH_MAX_BYTES

    local_aws.s3.create_bucket(Bucket="chunked-bucket")
    data = os.urandom(3 << 20)
    head = signed_head(local_aws, "PUT", "/chunked-bucket/k", data, {"Transfer-Encoding": "chunked"})
    status, reply = raw_exchange(local_aws.port, head, chunked(data))
    assert status == 200, reply
    assert local_aws.s3.get_object(Bucket="chunked-bucket", Key="k")["Body"].read() == data
    # chunked, so no Content-Length to refuse early: the endpoint stops reading past the limit
    big = b"{" + b" " * UNDECLARED_HASH_MAX_BYTES + b"}"
    request = AWSRequest(method="POST", url=f"http://127.0.0.1:{local_aws.port}/v1/describejobqueues", data=big,
                         headers={"Host": f"127.0.0.1:{local_aws.port}", "Content-Type": "application/json"})
    client = local_aws.credentials.client
    SigV4Auth(BotocoreCredentials(client.access_key_id, client.secret_access_key), "batch", local_aws.region).add_auth(request)
    head = ("POST /v1/describejobqueues HTTP/1.1\r\nTransfer-Encoding: chunked\r\n"
            + "".join(f"{k}: {v}\r\n" for k, v in request.headers.items()) + "\r\n")
    status, reply = raw_exchange(local_aws.port, head, chunked(big))
    assert status == 413 and b"EntityTooLarge" in reply, reply[:300]
    # a broken chunked body, a Content-Length that is not a number, a body cut short
    status, reply = raw_exchange(local_aws.port, signed_head(local_aws, "PUT", "/chunked-bucket/bad", b"x",
                                                             {"Transfer-Encoding": "chunked"}), [b"zz\r\nx\r\n0\r\n\r\n"])
    assert status == 400 and b"IncompleteBody" in reply and b"Invalid chunk header" in reply, reply
    status, reply = raw_exchange(local_aws.port, signed_head(local_aws, "PUT", "/chunked-bucket/bad", b"x",
                                                             {"Content-Length": "1e3"}), [b"x"])
    assert status == 400 and b"is not a number of bytes" in reply, reply
    data = b"y" * 1000
    status, reply = raw_exchange(local_aws.port, signed_head(local_aws, "PUT", "/chunked-bucket/short", data,
                                                             {"Content-Length": "1000"}), [data[:400]], half_close=True)
    assert status == 400 and b"IncompleteBody" in reply and b"after 400 of the 1000 bytes" in reply, reply
    for key in ("bad", "short"):
        with pytest.raises(botocore.exceptions.ClientError):
            local_aws.s3.head_object(Bucket="chunked-bucket", Key=key)


@pytest.mark.parametrize("payload", ["UNSIGNED-PAYLOAD", "STREAMING-UNSIGNED-PAYLOAD-TRAILER",
                                     "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"])
def test_a_body_left_out_of_the_signature_is_refused_so_a_captured_request_cannot_carry_another(local_aws, payload):
    local_aws.s3.create_bucket(Bucket="replay-bucket")
    original = b"what the client wrote"
    head = signed_head(local_aws, "PUT", "/replay-bucket/k", original, {"Content-Length": "25"}, payload_hash=payload)
    status, reply = raw_exchange(local_aws.port, head, [b"what an attacker put there"[:25]])
    assert status == 400 and b"InvalidRequest" in reply and b"payload_signing_enabled" in reply, reply
    assert payload.encode() in reply
    with pytest.raises(botocore.exceptions.ClientError):
        local_aws.s3.head_object(Bucket="replay-bucket", Key="k")


def test_boto3_with_payload_signing_off_is_told_what_to_set(local_aws):
    from botocore.config import Config

    unsigned = boto3.client("s3", **local_aws.client_kwargs, config=Config(s3={"payload_signing_enabled": False}))
    local_aws.s3.create_bucket(Bucket="unsigned-bucket")
    with pytest.raises(botocore.exceptions.ClientError) as refused:
        unsigned.put_object(Bucket="unsigned-bucket", Key="k", Body=b"data")
    assert refused.value.response["Error"]["Code"] == "InvalidRequest"
    assert "payload_signing_enabled" in refused.value.response["Error"]["Message"]


def test_the_projects_s3_clients_send_bodies_the_endpoint_takes(local_aws, tmp_path):
    """boto3 (one PUT and a multipart upload), s3fs (a body over the in-memory spool) and the storage layer."""
    import s3fs
    from batch_worker.storage import Location

    local_aws.s3.create_bucket(Bucket="clients-bucket")
    data = os.urandom(20 << 20)
    local_aws.s3.put_object(Bucket="clients-bucket", Key="put", Body=data)
    (tmp_path / "big.bin").write_bytes(data)
    local_aws.s3.upload_file(str(tmp_path / "big.bin"), "clients-bucket", "multipart")  # 8 MiB parts
    fs = s3fs.S3FileSystem(key=local_aws.credentials.client.access_key_id,
                           secret=local_aws.credentials.client.secret_access_key, endpoint_url=local_aws.url,
                           skip_instance_cache=True)
    fs.pipe_file("clients-bucket/s3fs", data)
    with fs.open("clients-bucket/s3fs-stream", "wb", block_size=5 << 20) as out:  # a multipart upload
        out.write(data)
    folder = Location.parse("s3://clients-bucket/location", {"key": local_aws.credentials.client.access_key_id,
                                                             "secret": local_aws.credentials.client.secret_access_key,
                                                             "endpoint_url": local_aws.url})
    folder.write_json(folder.join("a.json"), {"x": 1})
    for key in ("put", "multipart", "s3fs", "s3fs-stream"):
        assert local_aws.s3.get_object(Bucket="clients-bucket", Key=key)["Body"].read() == data, key
    assert folder.read_json(folder.join("a.json")) == {"x": 1}


def test_a_refused_upload_is_answered_to_a_client_still_sending_it(local_aws):
    """The endpoint refuses before reading the body; it then reads and drops it, so boto3 gets the error, not a reset."""
    local_aws.s3.create_bucket(Bucket="refused-bucket")
    wrong = boto3.client("s3", endpoint_url=local_aws.url, region_name=local_aws.region,
                         aws_access_key_id=local_aws.credentials.client.access_key_id, aws_secret_access_key="wrong")
    with pytest.raises(botocore.exceptions.ClientError) as refused:
        wrong.put_object(Bucket="refused-bucket", Key="k", Body=os.urandom(20 << 20))
    assert refused.value.response["Error"]["Code"] == "SignatureDoesNotMatch"


def test_the_body_limit_setting_is_checked():
    from localaws.guard import DEFAULT_MAX_BODY_BYTES, max_body_setting

    assert max_body_setting(None) == max_body_setting("") == DEFAULT_MAX_BODY_BYTES == 1 << 30
    assert max_body_setting("5368709120") == 5 << 30 and max_body_setting(str(1 << 20)) == 1 << 20
    for bad, problem in (("1GB", "whole number of bytes"), ("5368709121", "5 GiB"), ("1000", "1 MiB"), ("-1", "1 MiB")):
        with pytest.raises(ValueError, match=problem) as error:
            max_body_setting(bad)
        assert "LOCALAWS_MAX_BODY_BYTES" in str(error.value)


def test_serve_refuses_a_wrong_body_limit_before_it_starts(tmp_path):
    done = subprocess.run([PY, "-m", "localaws", "serve", "--port", "0", "--credentials", str(tmp_path / "c.json"),
                           "--no-provision"], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, LOCALAWS_MAX_BODY_BYTES="1GB"))
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert "error: LOCALAWS_MAX_BODY_BYTES must be a whole number of bytes, not '1GB'" in done.stderr


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident memory so far (VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmHWM in /proc/{pid}/status")


@pytest.fixture(scope="module")
def small_limit_endpoint(tmp_path_factory):
    """`python -m localaws serve` with LOCALAWS_MAX_BODY_BYTES at 1 MiB (nothing provisioned)."""
    folder = tmp_path_factory.mktemp("small-limit")
    env = dict(os.environ, LOCALAWS_MAX_BODY_BYTES=str(1 << 20))
    served = Served(folder / "credentials.json", env, folder / "endpoint.log", "--no-provision")
    yield served
    served.stop()


def test_the_body_limit_is_set_by_the_environment_and_a_chunked_body_past_it_is_refused(small_limit_endpoint):
    served = small_limit_endpoint
    s3 = served.client("s3")
    s3.create_bucket(Bucket="small-bucket")
    s3.put_object(Bucket="small-bucket", Key="fits", Body=b"x" * (1 << 20))
    with pytest.raises(botocore.exceptions.ClientError) as refused:
        s3.put_object(Bucket="small-bucket", Key="too-big", Body=b"x" * ((1 << 20) + 1))
    assert refused.value.response["Error"]["Code"] == "EntityTooLarge"
    assert "1048576 bytes, LOCALAWS_MAX_BODY_BYTES" in refused.value.response["Error"]["Message"]
    data = b"z" * (2 << 20)
    head = signed_head(served, "PUT", "/small-bucket/chunked", data, {"Transfer-Encoding": "chunked"})
    status, reply = raw_exchange(served.port, head, chunked(data))
    assert status == 413 and b"EntityTooLarge" in reply, reply[:300]
    assert [o["Key"] for o in s3.list_objects_v2(Bucket="small-bucket")["Contents"]] == ["fits"]


@pytest.mark.slow
def test_a_large_body_with_a_wrong_signature_is_not_buffered(tmp_path):
    """400 MB with a valid key id and a zero signature: refused before a byte of it is read (the endpoint's
    peak memory stays where it was; reading it first took it from about 180 MB to 540 MB)."""
    size = 400 * 1000 * 1000
    served = Served(tmp_path / "credentials.json", dict(os.environ), tmp_path / "endpoint.log", "--no-provision")
    try:
        before = peak_rss_mb(served.process.pid)
        zeros = b"\0" * (1 << 20)
        parts = [zeros] * (size // len(zeros)) + [zeros[:size % len(zeros)]]
        for payload_hash in (None, "0" * 64):  # the body's true hash, and a hash it does not have
            head = signed_head(served, "PUT", "/any-bucket/k", b"", {"Content-Length": str(size)},
                               payload_hash=payload_hash or __import__("hashlib").sha256(b"\0" * size).hexdigest(),
                               zero_signature=True)
            status, reply = raw_exchange(served.port, head, parts)
            assert status == 403 and b"SignatureDoesNotMatch" in reply, reply[:300]
        # without a signed hash the signature needs the body: a small one is read (16 MiB at most, 8 in memory)
        method, path, service, body, headers = DESCRIBE_QUEUES
        status, _, answer = send(served, method, path, service, b"{" + b" " * (15 << 20) + b"}", headers)
        assert status == 200, answer[:300]
        grown = peak_rss_mb(served.process.pid) - before
        assert grown < 60, f"the endpoint's peak memory grew by {grown:.0f} MB"
    finally:
        served.stop()
