"""`make up` through scripts/up.sh, as a user runs it: another port, readiness, restarts, stopping."""
from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import sqlite3
import stat
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from tests.scripts.stack_processes import (free_port, kill_leftovers, processes_naming, script_environment,
                                           start_script, tail, wait_for, wait_until_gone)

pytestmark = pytest.mark.system

COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")


@pytest.fixture
def stack(tmp_path, airflow_db):
    """Start scripts/up.sh (several times if asked) in a private home on free ports; kill what is left after."""
    marker = str(tmp_path)
    # Only the DAG a test unpauses runs (the scheduler would start every scheduled DAG otherwise).
    env = script_environment(tmp_path, migrated_db=airflow_db, AIRFLOW__API__PORT=str(free_port()),
                             AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION="True")
    with contextlib.closing(sqlite3.connect(tmp_path / "airflow" / "airflow.db")) as db, db:
        db.execute("UPDATE dag SET is_paused = 1")
    started: list[subprocess.Popen] = []

    def up(name: str = "up", extra: dict[str, str] | None = None) -> tuple[subprocess.Popen, Path]:
        log = tmp_path / f"{name}.out"
        started.append(start_script("exec scripts/up.sh", {**env, **(extra or {})}, log))
        return started[-1], log

    up.env, up.home, up.marker = env, tmp_path / "airflow", marker
    yield up
    for proc in started:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
    kill_leftovers(marker)


def wait_ready(proc, log):
    wait_for(lambda: "Airflow is ready" in tail(log), 600, "'Airflow is ready'", proc, log)


def stack_sessions(home: Path) -> dict[str, int]:
    lines = (home / "stack.pids").read_text().split("\n")
    return {name: int(pid) for name, pid in (line.split() for line in lines if line.strip())}


def listening_sockets() -> dict[int, list[str]]:
    """pid -> local addresses it listens on (TCP), from `ss`."""
    out = subprocess.run(["ss", "-Hltnp"], capture_output=True, text=True, check=True, timeout=60).stdout
    found: dict[int, list[str]] = {}
    for line in out.splitlines():
        local = line.split()[3]
        for pid in re.findall(r"pid=(\d+)", line):
            found.setdefault(int(pid), []).append(local)
    return found


def airflow_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", 'source scripts/env.sh && exec airflow "$@"', "airflow", *args],
                          cwd=Path(__file__).resolve().parents[2], env=env, capture_output=True, text=True,
                          timeout=300)


def test_up_on_another_port_runs_tasks_listens_on_loopback_only_and_stops_as_a_whole(stack):
    proc, log = stack()
    wait_ready(proc, log)
    port = stack.env["AIRFLOW__API__PORT"]
    assert port != "8080" and f"http://127.0.0.1:{port}" in tail(log)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v2/monitor/health", timeout=30) as response:
        health = json.load(response)
    assert {name: health[name]["status"] for name in ("metadatabase", "scheduler", "triggerer", "dag_processor")} \
        == dict.fromkeys(("metadatabase", "scheduler", "triggerer", "dag_processor"), "healthy")
    assert set(stack_sessions(stack.home)) == {"owner", *COMPONENTS}

    # A task reaches the api-server on this port: the run succeeds (it failed with "Connection refused"
    # on localhost:8080 when only [api] port was changed).
    trigger = None
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:  # the dag-processor registers the DAG a little after start
        trigger = airflow_cli(stack.env, "dags", "unpause", "batch_smoke")
        if trigger.returncode == 0:
            trigger = airflow_cli(stack.env, "dags", "trigger", "batch_smoke", "--run-id", "on_another_port",
                                  "--conf", json.dumps({"shards": 1, "children": 2}))
            break
        time.sleep(3)
    assert trigger.returncode == 0, trigger.stderr[-2000:]

    def run_state():
        runs = airflow_cli(stack.env, "dags", "list-runs", "batch_smoke", "-o", "json")
        listed = runs.stdout.strip().splitlines()[-1:] if runs.returncode == 0 else []  # warnings come first
        states = {run["run_id"]: run["state"] for run in json.loads(listed[0])} if listed else {}
        return states.get("on_another_port") in ("success", "failed") and states["on_another_port"]

    assert wait_for(run_state, 600, "end of the batch_smoke run", proc, log) == "success", \
        tail(stack.home / "logs" / "up" / "scheduler.log")

    # Nothing of the stack listens beyond loopback (the log servers would, on 0.0.0.0:8793/8794).
    ours = set(processes_naming(stack.marker))
    exposed = {pid: addrs for pid, addrs in listening_sockets().items() if pid in ours
               and any(not addr.startswith(("127.0.0.1:", "[::1]:")) for addr in addrs)}
    assert not exposed, exposed

    # Local state is private to the user.
    for folder in (stack.home, Path(stack.env["DATA_ROOT"])):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
    for private in ("simple_auth_manager_passwords.json.generated", "airflow.db", "airflow.cfg"):
        assert stat.S_IMODE((stack.home / private).stat().st_mode) & 0o077 == 0, private

    # A second `make up` for the same home refuses and leaves the first one alone.
    again, again_log = stack("again")
    assert again.wait(timeout=120) != 0
    assert f"already running for {stack.home} (make up, pid {proc.pid})" in tail(again_log)
    assert proc.poll() is None

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=180) != 0
    wait_until_gone(stack.marker, 60)
    assert not (stack.home / "stack.pids").exists()


def test_up_after_a_killed_one_stops_its_leftovers_and_is_ready_only_with_its_own_components(stack):
    first, first_log = stack("first")
    wait_ready(first, first_log)
    old = stack_sessions(stack.home)
    first.send_signal(signal.SIGKILL)  # its components keep running and hold the port
    first.wait(timeout=60)
    assert all(processes_naming(stack.marker).get(old[name]) for name in COMPONENTS)

    second, second_log = stack("second")
    wait_ready(second, second_log)
    for name in COMPONENTS:
        assert f"stopping the {name} a previous make up left running (session {old[name]})" in tail(second_log)
    running = processes_naming(stack.marker)
    assert not {old[name] for name in COMPONENTS} & set(running)
    new = stack_sessions(stack.home)
    assert new["owner"] == second.pid and all(new[name] in running for name in COMPONENTS)

    os.killpg(second.pid, signal.SIGINT)  # Ctrl-C in its terminal
    assert second.wait(timeout=180) != 0
    wait_until_gone(stack.marker, 60)


def test_up_names_the_component_that_died_while_starting_and_stops_the_rest(stack):
    # A triggerer that cannot start: its capacity is not a number.
    proc, log = stack(extra={"AIRFLOW__TRIGGERER__CAPACITY": "many"})
    assert proc.wait(timeout=600) != 0, tail(log)
    assert "Airflow's triggerer exited while starting" in tail(log)
    assert "Airflow is ready" not in tail(log)
    wait_until_gone(stack.marker, 60)
