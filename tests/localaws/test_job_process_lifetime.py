"""A job's processes end with the endpoint process that started them, however it ends.

`python -m localaws serve` runs in a process of its own; each job starts a process of its own (a
grandchild of the endpoint, in the job's process group) and sleeps. Killing the endpoint with SIGKILL
gives it no chance to clean up: the kernel's parent-death signal ends each job process, and the
reaper process ends what is left of the job's process group. A SIGTERM stop terminates them before
the endpoint exits.
"""
from __future__ import annotations

import json
import os
import signal
import time
import uuid
from pathlib import Path

import pytest

from tests.localaws.test_batch import PY, assert_process_gone, host_folder, host_pids
from tests.localaws.test_guard import Served

#: the job: a process of its own in its group, both carrying the job's marker (argv[2]), then a long sleep; the file
#: argv[1] says it has started (the test finds the host's pids by the marker: a job's own pids are its namespace's)
JOB = ("import json, subprocess, sys, time, os; "
       "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)', sys.argv[2]]); "
       "open(sys.argv[1] + '.tmp', 'w').write('started'); "
       "os.rename(sys.argv[1] + '.tmp', sys.argv[1]); time.sleep(300)")


def endpoint(tmp_path: Path) -> Served:
    env = {name: os.environ[name] for name in ("PATH", "HOME", "LANG") if name in os.environ}
    env["BATCH_LOCAL_VCPUS"] = "2"
    return Served(tmp_path / "credentials.json", env, tmp_path / "endpoint.log")


def start_jobs(served: Served, tmp_path: Path, count: int) -> list[int]:
    """`count` jobs RUNNING on `served`; the pids of their processes and of the processes they started."""
    batch = served.client("batch")
    name = f"lifetime-{uuid.uuid4().hex[:6]}"
    batch.register_job_definition(jobDefinitionName=name, type="container", containerProperties={
        "image": "unused:1", "command": [PY, "-c", JOB, "Ref::pids", "Ref::marker"], **host_folder(tmp_path),
        "resourceRequirements": [{"type": "VCPU", "value": "1"}, {"type": "MEMORY", "value": "64"}]})
    files = [tmp_path / f"started-{i}" for i in range(count)]
    markers = [f"lifetime-job-{uuid.uuid4().hex}" for _ in files]
    for file, marker in zip(files, markers):
        batch.submit_job(jobName=name, jobQueue="airbatch-cpu", jobDefinition=name,
                         parameters={"pids": str(file), "marker": marker})
    deadline = time.monotonic() + 120
    while not all(file.exists() for file in files):
        assert time.monotonic() < deadline, f"the jobs did not start: {served.log.read_text()}"
        time.sleep(0.05)
    pids = [pid for marker in markers for pid in host_pids(marker)]
    assert len(pids) >= 2 * count, pids  # each job's process and the process it started, at least
    return pids


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
    except (ProcessLookupError, FileNotFoundError):
        return False


@pytest.mark.skipif(not os.path.exists("/proc"), reason="job processes are found through /proc")
def test_job_processes_die_when_the_endpoint_is_killed_with_sigkill(tmp_path):
    served = endpoint(tmp_path)
    pids: list[int] = []
    try:
        pids = start_jobs(served, tmp_path, count=2)
        assert all(alive(pid) for pid in pids)
        served.process.send_signal(signal.SIGKILL)
        served.process.wait(timeout=30)
        for pid in pids:
            assert_process_gone(pid, timeout=15)
    finally:
        served.stop()
        for pid in pids:  # nothing left behind, even when the assertion failed
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.skipif(not os.path.exists("/proc"), reason="job processes are found through /proc")
def test_job_processes_are_terminated_before_a_stopped_endpoint_exits(tmp_path):
    served = endpoint(tmp_path)
    pids: list[int] = []
    try:
        pids = start_jobs(served, tmp_path, count=1)
        served.process.send_signal(signal.SIGTERM)
        assert served.process.wait(timeout=60) == 0
        assert not [pid for pid in pids if alive(pid)]  # already gone when the endpoint has exited
    finally:
        served.stop()
        for pid in pids:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
