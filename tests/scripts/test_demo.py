"""`make demo` shows progress while the DAG runs, and stops cleanly on Ctrl-C and on SIGTERM: the DAG run,
its Batch job, its progress and the endpoint."""
from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess

import pytest

from localaws.stack import REPO
from tests.scripts.stack_processes import (batch_job_processes, kill_leftovers, processes_naming, script_environment,
                                           start_script, tail, wait_for, wait_until_gone)

pytestmark = pytest.mark.system

SLOW_RUN = json.dumps({"sleep_s": 30, "bucket_count": 4, "units": 40})
SMALL_RUN = json.dumps({"sleep_s": 0.05, "bucket_count": 60, "units": 300, "batches_per_shard": 20,
                        "batches_per_child": 5})
PROGRESS_LINE = re.compile(r"^\[ *\d+s\] (?P<text>.*)$")
BATCHES = re.compile(r"batches (?P<done>\d+)/(?P<total>\d+) done")


def demo_output(env: dict[str, str], log) -> str:
    demo = start_script("exec scripts/demo.sh", env, log)
    try:
        code = demo.wait(timeout=600)
    except subprocess.TimeoutExpired:
        os.killpg(demo.pid, signal.SIGKILL)
        demo.wait(timeout=60)
        raise AssertionError(f"make demo did not end within 600 s:\n{tail(log)}")
    assert code == 0, tail(log)
    return log.read_text(errors="replace")


def progress_before_summary(output: str, dag_id: str) -> tuple[list[str], dict]:
    """The progress lines printed before the summary, and the summary."""
    assert "\r" not in output, "progress to a file or pipe must be plain lines"
    lines = output.splitlines()
    summary_at = lines.index(f"{dag_id}: latest run success")
    progress = [m["text"] for line in lines[:summary_at] if (m := PROGRESS_LINE.match(line))]
    summary_json = output[output.index("summary:\n{") + len("summary:\n"):output.index("\ndemo took")]
    return progress, json.loads(summary_json)


def test_the_demo_prints_progress_with_tasks_and_batch_counts_before_its_summary(tmp_path):
    marker = str(tmp_path)
    env = script_environment(tmp_path, DEMO_DAG="units_of_work", DEMO_DATE="",
                             DEMO_CONF=SMALL_RUN, DEMO_PROGRESS_SECONDS="1")
    try:
        progress, summary = progress_before_summary(demo_output(env, tmp_path / "first.out"), "units_of_work")
        counted = [m for text in progress if (m := BATCHES.search(text))]
        assert counted, progress
        assert all(int(m["total"]) == summary["batches"] == 60 for m in counted), progress
        assert [int(m["done"]) for m in counted] == sorted(int(m["done"]) for m in counted), progress
        last = progress[-1]
        assert re.match(r"tasks (\d+)/\1 done \| batches 60/60 done$", last), progress
        assert summary["succeeded"] == 60 and summary["cached"] == 0
        assert all(a != b for a, b in zip(progress, progress[1:])), "a line is printed only when it changed"

        # the same run again finds every batch done, and says so
        progress, summary = progress_before_summary(demo_output(env, tmp_path / "again.out"), "units_of_work")
        assert summary["cached"] == 60 and summary["succeeded"] == 0
        assert re.match(r"tasks (\d+)/\1 done \| batches 60/60 done \(60 cached\)$", progress[-1]), progress
        wait_until_gone(marker, 60)
    finally:
        kill_leftovers(marker)


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_interrupting_the_demo_stops_the_run_its_batch_job_and_the_endpoint(how, tmp_path):
    marker = str(tmp_path)
    env = script_environment(tmp_path, DEMO_DAG="units_of_work", DEMO_DATE="",
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


def test_interrupting_the_demo_while_it_migrates_stops_the_migration_the_endpoint_and_the_database(tmp_path):
    # A migration that takes long (a new Airflow release on a large DB): here `airflow db migrate` is a stand-in
    # that sleeps, first on PATH, while every other `airflow` command is Airflow's own.
    marker = str(tmp_path)
    shims = tmp_path / "shims"
    shims.mkdir()
    (shims / "airflow").write_text('#!/usr/bin/env bash\n[[ "$1 $2" == "db migrate" ]] && exec sleep 600\n'
                                   f'exec {REPO / ".venv" / "bin" / "airflow"} "$@"\n')
    (shims / "airflow").chmod(0o700)
    env = script_environment(tmp_path, DEMO_DAG="units_of_work", DEMO_DATE="")
    log = tmp_path / "demo.out"
    demo = start_script(f'PATH={shims}:$PATH exec scripts/demo.sh', env, log)
    try:
        # the endpoint has started beside the migration, and the demo waits for the migration now
        wait_for(lambda: "local AWS endpoint:" in tail(log), 300, "the endpoint", demo, log)
        assert any(cmd.startswith("sleep 600") for cmd in processes_naming(marker).values())
        demo.send_signal(signal.SIGTERM)
        assert demo.wait(timeout=120) == 143, tail(log)
        assert "demo interrupted" in tail(log)
        # the migration, the endpoint and the database the demo started are gone, and the migration is not
        # recorded as done
        wait_until_gone(marker, 60)
        assert not (tmp_path / "airflow" / "localaws.pid").exists()
        assert not (tmp_path / "airflow" / "migrated.stamp").exists()
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
            demo.wait(timeout=60)
        kill_leftovers(marker)
