"""`make demo` stops cleanly on Ctrl-C and on SIGTERM: the DAG run, its Batch job and the endpoint."""
from __future__ import annotations

import json
import os
import signal
import stat

import pytest

from tests.scripts.stack_processes import (batch_job_processes, kill_leftovers, processes_naming, script_environment,
                                           start_script, tail, wait_for, wait_until_gone)

pytestmark = pytest.mark.system

SLOW_RUN = json.dumps({"sleep_s": 30, "bucket_count": 4, "units": 40})


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_interrupting_the_demo_stops_the_run_its_batch_job_and_the_endpoint(how, tmp_path, airflow_db):
    marker = str(tmp_path)
    env = script_environment(tmp_path, migrated_db=airflow_db, DEMO_DAG="units_of_work", DEMO_DATE="",
                             DEMO_CONF=SLOW_RUN)
    log = tmp_path / "demo.out"
    # `make demo` runs this recipe; the terminal's Ctrl-C reaches the whole group, `kill` the script alone.
    demo = start_script("exec scripts/demo.sh", env, log)
    try:
        wait_for(lambda: batch_job_processes(marker), 600, "Batch job process", demo, log)
        started = processes_naming(marker)
        assert any("localaws serve" in cmd for cmd in started.values()), started
        if how == "ctrl-c":
            os.killpg(demo.pid, signal.SIGINT)
        else:
            demo.send_signal(signal.SIGTERM)
        code = demo.wait(timeout=120)
        assert code != 0, tail(log)
        assert "demo interrupted" in tail(log)
        wait_until_gone(marker, 60)
        assert not (tmp_path / "airflow" / "localaws.pid").exists()
        # what the run and the endpoint wrote is private to the user
        for folder in (tmp_path / "airflow", tmp_path / "data"):
            assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
        written = [p for p in (tmp_path / "airflow").rglob("*") if p.is_file()]
        written += [p for p in (tmp_path / "data").rglob("*") if p.is_file()]
        assert written and all(stat.S_IMODE(p.stat().st_mode) & 0o077 == 0 for p in written), \
            {str(p): oct(p.stat().st_mode) for p in written if p.stat().st_mode & 0o077}
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
            demo.wait(timeout=60)
        kill_leftovers(marker)
