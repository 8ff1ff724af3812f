"""The fan-out memory benchmark's sampler on real processes (the whole run is `make`-free: see its docstring)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))

import fanout_memory  # noqa: E402

pytestmark = pytest.mark.timeout(120)

# Takes 300 MB, gives it back, then waits: only a peak that outlives the allocation sees it.
HOG = ("import sys, time; block = bytearray(300 * 2**20); block[::4096] = b'x' * len(block[::4096]); del block; "
       "print('freed', flush=True); time.sleep(60)")


def test_a_process_peak_is_kept_after_it_frees_its_memory_and_counted_under_its_kind():
    hog = subprocess.Popen([sys.executable, "-c", HOG], stdout=subprocess.PIPE, text=True)
    try:
        assert hog.stdout.readline().strip() == "freed"
        sampler = fanout_memory.MemorySampler(lambda: {hog.pid: "python -m batch_worker.run"})
        sampler.read_once()
        kinds = sampler.by_kind()
        assert kinds["Batch jobs"]["processes"] == 1
        assert kinds["Batch jobs"]["peak_process_mb"] >= 300  # VmHWM: the peak, though RSS is back down
        assert kinds["Batch jobs"]["peak_sum_mb"] < 300  # the sum is of RSS at the reading
        assert kinds["Batch jobs"]["example"] == "python -m batch_worker.run"
    finally:
        hog.kill()
        hog.wait(timeout=30)
    sampler.read_once()  # a process that is gone keeps its last peak
    assert sampler.by_kind()["Batch jobs"]["peak_process_mb"] >= 300 and sampler.readings == 2


def test_descendants_of_the_stacks_processes_are_sampled_though_nothing_in_them_names_the_stack():
    # a shell that names nothing, started by this process, and its own child
    shell = subprocess.Popen(["sh", "-c", "sleep 60 & wait"], stdout=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            found = fanout_memory.with_descendants({shell.pid: "sh"})
            if any(command.startswith("sleep") for command in found.values()):
                break
            time.sleep(0.05)
        assert shell.pid in found and [c for c in found.values() if c == "sleep 60"], found
        assert os.getpid() not in found  # only below the processes given
    finally:
        os.killpg(shell.pid, signal.SIGKILL)
        shell.wait(timeout=30)


def test_the_sampler_thread_reads_until_it_is_stopped():
    with fanout_memory.MemorySampler(lambda: {}, interval=0.01) as sampler:
        deadline = time.monotonic() + 60
        while sampler.readings < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
    readings = sampler.readings
    assert readings >= 3
    time.sleep(0.1)
    assert sampler.readings == readings


@pytest.mark.parametrize(("title", "kind"), [
    ("airflow worker -- LocalExecutor: <idle>", "executor workers"),
    ("airflow supervisor: ['airflow', 'tasks', 'run']", "task processes"),
    ("airflow worker -- 0199a1b2-0000-7000-8000-000000000000", "task processes"),
    ("airflow api_server -- host:127.0.0.1 port:8080", "api-server"),
    ("/venv/bin/python /venv/bin/airflow dag-processor", "dag-processor"),
    ("postgres: airflow airflow [local] idle", "postgres"),
    ("python -m localaws serve --port 4566", "local endpoint"),
    ("/usr/bin/bwrap --die-with-parent --bind /tmp/localaws-jobs-x/1 /tmp -- /usr/bin/env -u PWD -- batch-worker "
     "s3://data/runs/w.json", "Batch jobs"),
    ("bash /repo/scripts/up.sh", "make up"),
])
def test_airflows_process_titles_map_to_their_kind(title, kind):
    assert fanout_memory.kind_of(title) == kind
