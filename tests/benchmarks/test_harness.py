"""benchmarks/harness.py: the CPU clock a benchmark reads its tasks' CPU seconds off."""
from __future__ import annotations

import datetime as dt
import shutil
import subprocess
import sys
import time

import pytest

from benchmarks.harness import CpuClock, cpu_between, task_cpu


def test_cpu_between_interpolates_inside_the_samples_and_clamps_outside():
    samples = [(10.0, 1.0), (12.0, 3.0), (14.0, 3.0)]
    assert cpu_between(samples, 10.0, 12.0) == pytest.approx(2.0)
    assert cpu_between(samples, 11.0, 13.0) == pytest.approx(1.0)  # read at 11: 2.0, at 13: 3.0
    assert cpu_between(samples, 5.0, 20.0) == pytest.approx(2.0)
    assert cpu_between(samples, 12.5, 14.0) == 0.0


def test_a_tasks_cpu_spans_its_first_start_to_its_last_end():
    def at(second):
        return dt.datetime.fromtimestamp(second, dt.timezone.utc)

    samples = [(0.0, 0.0), (10.0, 10.0), (20.0, 30.0)]
    rows = [("run_shard", at(2), at(6)), ("run_shard", at(4), at(15)), ("prepare", at(0), at(2)),
            ("collect", at(16), None)]
    assert task_cpu(samples, rows) == {"prepare": pytest.approx(2.0), "run_shard": pytest.approx(18.0)}


@pytest.mark.timeout(120)
def test_the_clock_counts_a_child_while_it_runs_and_after_it_ended():
    burn = "import time\nend = time.process_time() + 0.6\nwhile time.process_time() < end: pass\n" \
           "import sys; sys.stdout.write('done'); sys.stdout.flush(); time.sleep(60)"
    with CpuClock(interval=0.05) as clock:
        before = clock.read()
        running = subprocess.Popen([sys.executable, "-c", burn], stdout=subprocess.PIPE, text=True)
        assert running.stdout.read(4) == "done"
        live = clock.read() - before  # read from the child's /proc entry
        running.kill()
        running.wait(timeout=60)
        time.sleep(0.2)
    ended = clock.samples[-1][1] - before  # its last value seen stays
    assert live >= 0.5 and ended >= live
    assert all(later[1] >= earlier[1] for earlier, later in zip(clock.samples, clock.samples[1:]))


@pytest.mark.timeout(120)
def test_the_clock_counts_a_sandboxed_job_whose_namespace_init_lets_it_go():
    """A Batch job runs under bubblewrap in its own pid namespace; its processes' times do not reach the
    reaped-children times of the process that started it."""
    from localaws import sandbox

    if shutil.which("bwrap") is None:
        pytest.skip("bubblewrap is not installed")
    burn = "import time\nend = time.process_time() + 0.6\nwhile time.process_time() < end: pass"
    with CpuClock(interval=0.05) as clock:
        before = clock.read()
        job = subprocess.run(["bwrap", *sandbox._base_arguments(), "--", "/usr/bin/python3", "-c", burn],
                             capture_output=True, text=True, timeout=60)
        assert job.returncode == 0, job.stderr
    assert clock.samples[-1][1] - before >= 0.4  # all but at most the last interval of its life
