"""The smoke job (batch_worker.smoke), as a Batch child runs it: one file named after its array index, and the child
given by --fail-index failing instead."""
from __future__ import annotations

import json
import os
import subprocess
import sys


def smoke(tmp_path, index: int, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "AWS_BATCH_JOB_ARRAY_INDEX": str(index), "AWS_BATCH_JOB_ID": "job-1:" + str(index)}
    return subprocess.run([sys.executable, "-m", "batch_worker.smoke", "--out", str(tmp_path / "out"), *args],
                          env=env, capture_output=True, text=True, timeout=60)


def test_a_child_writes_the_file_of_its_index(tmp_path):
    done = smoke(tmp_path, 3)
    assert done.returncode == 0, done.stderr
    record = json.loads((tmp_path / "out" / "child-00003.json").read_text())
    assert record["index"] == 3 and record["job_id"] == "job-1:3" and record["ended"] >= record["started"]
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["child-00003.json"]  # no temporary file left


def test_the_child_named_by_fail_index_fails_and_writes_nothing(tmp_path):
    done = smoke(tmp_path, 2, "--fail-index", "2")
    assert done.returncode == 3 and "failing on purpose (--fail-index 2)" in done.stderr
    assert not (tmp_path / "out").exists()
