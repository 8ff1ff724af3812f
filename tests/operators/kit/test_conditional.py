"""Compare-and-swap writes (operators.kit.conditional) on a local DATA_ROOT and on s3:// through the local endpoint:
a write from a stale snapshot is refused, concurrent updates from threads and processes lose nothing, and the local
endpoint admits one of two racing conditional creates, as S3 does. The registry built on these writes:
test_registry_concurrency.py.
"""
from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path

import pytest

from operators.kit import conditional
from operators.kit.engine import location

REPO = Path(__file__).resolve().parents[3]
DEADLINE_S = 60


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path) -> str:
    """A DATA_ROOT: a local folder, or a fresh bucket on the local endpoint."""
    if request.param == "local":
        return str(tmp_path / "data")
    aws = request.getfixturevalue("local_aws")
    bucket = f"registry-{uuid.uuid4().hex[:12]}"
    aws.s3.create_bucket(Bucket=bucket)
    return f"s3://{bucket}/data"


def together(*calls) -> list:
    """Run `calls` in threads released at the same moment; each one's result or exception, in order."""
    start = threading.Barrier(len(calls))
    outcomes: list = [None] * len(calls)

    def run(index, call):
        start.wait(timeout=DEADLINE_S)
        try:
            outcomes[index] = call()
        except Exception as error:  # noqa: BLE001 - the outcome looked at
            outcomes[index] = error

    threads = [threading.Thread(target=run, args=(i, c), daemon=True) for i, c in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=DEADLINE_S)
        assert not thread.is_alive(), "a writer did not finish within the deadline"
    return outcomes


def test_a_write_from_a_stale_snapshot_is_refused_and_leaves_the_newer_content(root):
    loc = location(root)
    path = loc.join("state.json")
    absent = conditional.read(loc, path)
    assert absent.data is None
    conditional.write_if_unchanged(loc, absent, b"first")
    with pytest.raises(conditional.Conflict, match="changed since it was read"):
        conditional.write_if_unchanged(loc, absent, b"created twice")
    first = conditional.read(loc, path)
    conditional.write_if_unchanged(loc, first, b"second")
    with pytest.raises(conditional.Conflict):
        conditional.write_if_unchanged(loc, first, b"from the stale snapshot")
    assert conditional.read(loc, path).data == b"second"


def test_concurrent_updates_from_threads_lose_no_increment(root):
    loc = location(root)
    path = loc.join("counter")

    def add_one(data):
        return str(int(data or b"0") + 1).encode()

    def worker():
        for _ in range(10):
            conditional.update(loc, path, add_one)

    assert all(outcome is None for outcome in together(*[worker] * 6))
    assert conditional.read(loc, path).data == b"60"


def test_concurrent_updates_from_processes_lose_no_increment(tmp_path):
    path = tmp_path / "counter"
    script = textwrap.dedent(f"""
        from operators.kit import conditional
        from batch_worker.storage import Location
        loc = Location.parse({str(tmp_path)!r})
        for _ in range(25):
            conditional.update(loc, {str(path)!r}, lambda data: str(int(data or b"0") + 1).encode())
    """)
    workers = [subprocess.Popen([sys.executable, "-c", script], cwd=REPO) for _ in range(4)]
    assert [w.wait(timeout=DEADLINE_S) for w in workers] == [0] * 4
    assert path.read_bytes() == b"100"
    assert not list(tmp_path.glob(".tmp-*"))


def test_update_leaves_the_file_alone_when_the_change_is_none(root):
    loc = location(root)
    path = loc.join("pointer")
    assert conditional.update(loc, path, lambda data: b"v1") == b"v1"
    assert conditional.update(loc, path, lambda data: None) is None
    assert conditional.read(loc, path).data == b"v1"


def test_the_local_endpoint_admits_one_of_two_racing_conditional_creates(local_aws, monkeypatch):
    """moto checks the condition, then writes: slowed between the two, both would pass without the endpoint's lock."""
    import boto3
    import botocore.exceptions
    from moto.s3.models import S3Backend

    real_put = S3Backend.put_object

    def slow_put(self, *args, **kwargs):
        time.sleep(0.2)
        return real_put(self, *args, **kwargs)

    monkeypatch.setattr(S3Backend, "put_object", slow_put)
    bucket = f"race-{uuid.uuid4().hex[:12]}"
    local_aws.s3.create_bucket(Bucket=bucket)
    clients = [boto3.client("s3", **local_aws.client_kwargs) for _ in range(4)]

    def create(client, body):
        try:
            client.put_object(Bucket=bucket, Key="once", Body=body, IfNoneMatch="*")
            return "created"
        except botocore.exceptions.ClientError as error:
            return error.response["Error"]["Code"]

    outcomes = together(*[lambda c=c, i=i: create(c, str(i).encode()) for i, c in enumerate(clients)])
    assert sorted(outcomes) == ["PreconditionFailed"] * 3 + ["created"]
    stored = local_aws.s3.get_object(Bucket=bucket, Key="once")["Body"].read()
    assert stored == str(outcomes.index("created")).encode()
