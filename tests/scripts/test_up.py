"""`make up` through scripts/up.sh, as a user runs it: another port, readiness, restarts, stopping."""
from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import signal
import stat
import subprocess
import urllib.request
from pathlib import Path

import pytest

from localaws.stack import REPO, local_bundle
from tests.scripts.stack_processes import (free_port, kill_leftovers, processes_naming, script_environment,
                                           start_script, tail, wait_for, wait_until_gone)

pytestmark = pytest.mark.system

COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")


@pytest.fixture
def stack(tmp_path):
    """Start scripts/up.sh (several times if asked) in a private home on free ports; kill what is left after."""
    marker = str(tmp_path)
    # Only the DAG a test unpauses runs (the scheduler would start every scheduled DAG otherwise).
    # The product's DAGs and the provider's stock Batch DAG (tests/fixture_dags) as a second bundle.
    bundles = json.dumps([{"name": "dags-folder", "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle",
                           "kwargs": {}}, local_bundle("test-dags", REPO / "tests" / "fixture_dags")])
    env = script_environment(tmp_path, AIRFLOW__API__PORT=str(free_port()),
                             AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION="True",
                             AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST=bundles)
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


def rest_api(stack):
    """Airflow's REST API of the stack, logged in as its admin (scripts/rehearsal.py's client). Waiting on it
    costs a request where a poll with the CLI started a whole Airflow process each time."""
    spec = importlib.util.spec_from_file_location("rehearsal", REPO / "scripts" / "rehearsal.py")
    rehearsal = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rehearsal)
    passwords = json.loads((stack.home / "simple_auth_manager_passwords.json.generated").read_text())
    return rehearsal.Api(f"http://127.0.0.1:{stack.env['AIRFLOW__API__PORT']}", "admin", passwords["admin"])


def registered(api, dag_id: str) -> bool:
    """The dag-processor has registered `dag_id` (a little after the stack is ready)."""
    try:
        return api.get(f"/api/v2/dags/{dag_id}")["dag_id"] == dag_id
    except Exception as error:  # 404 until then
        if "HTTP 404" not in str(error):
            raise
        return False


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
    # on localhost:8080 when only [api] port was changed). The provider's stock BatchOperator (sync,
    # deferrable, an array) and BatchSensor (poking, deferrable) run under the live scheduler and triggerer
    # against the endpoint's start latency (a deferrable task saw its job end before it deferred).
    # One run triggered with the CLI, one through the REST API (as the official client sends it).
    runs = {"batch_smoke": {"shards": 1, "children": 2}, "stock_batch_with_latency": {"prefix": "under-up"}}
    api = rest_api(stack)
    for dag_id in runs:
        wait_for(lambda: registered(api, dag_id), 300, f"{dag_id} registered", proc, log)
        api.unpause(dag_id)
    trigger = airflow_cli(stack.env, "dags", "trigger", "batch_smoke", "--run-id", "on_another_port",
                          "--conf", json.dumps(runs["batch_smoke"]))
    assert trigger.returncode == 0, trigger.stderr[-2000:]
    api._call("POST", "/api/v2/dags/stock_batch_with_latency/dagRuns",
              {"dag_run_id": "on_another_port", "logical_date": None, "conf": runs["stock_batch_with_latency"]})

    def run_state(dag_id):
        state = api.run_state(dag_id, "on_another_port")
        return state in ("success", "failed") and state

    for dag_id in runs:
        assert wait_for(lambda: run_state(dag_id), 600, f"end of the {dag_id} run", proc, log) == "success", \
            tail(stack.home / "logs" / "up" / "latest" / "scheduler.log")

    # Nothing of the stack listens beyond loopback (the log servers would, on 0.0.0.0:8793/8794).
    ours = set(processes_naming(stack.marker))
    exposed = {pid: addrs for pid, addrs in listening_sockets().items() if pid in ours
               and any(not addr.startswith(("127.0.0.1:", "[::1]:")) for addr in addrs)}
    assert not exposed, exposed

    # Local state is private to the user.
    for folder in (stack.home, Path(stack.env["DATA_ROOT"])):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
    for private in ("simple_auth_manager_passwords.json.generated", "airflow.cfg", "postgres", "postgres/data"):
        assert stat.S_IMODE((stack.home / private).stat().st_mode) & 0o077 == 0, private
    # The metadata DB is the home's PostgreSQL, on a unix socket only: no TCP listener of its own.
    assert not (stack.home / "airflow.db").exists()
    postgres = [pid for pid, cmd in processes_naming(stack.marker).items() if "postgres -D" in cmd]
    assert postgres and not set(postgres) & set(listening_sockets()), postgres

    # A second `make up` for the same home refuses and leaves the first one alone.
    again, again_log = stack("again")
    assert again.wait(timeout=120) != 0
    assert f"already running for {stack.home} (make up, pid {proc.pid})" in tail(again_log)
    assert proc.poll() is None
    # The refusing one stopped none of the first one's components, nor its endpoint or its database.
    running = processes_naming(stack.marker)
    assert all(pid in running for name, pid in stack_sessions(stack.home).items() if name != "owner"), running
    endpoint = int((stack.home / "localaws.pid").read_text().split()[0])
    assert endpoint in running and set(postgres) <= set(running), (endpoint, postgres, running)
    assert api.run_state("batch_smoke", "on_another_port") == "success"  # the DB still answers

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=180) != 0
    wait_until_gone(stack.marker, 60)
    assert not (stack.home / "stack.pids").exists(), tail(log)
    # The database was stopped last, its own way (a fast shutdown by `localdb stop`), not swept up with
    # Airflow's components for writing into the same log folder.
    database_log = (stack.home / "logs" / "up" / "latest" / "postgres.log").read_text()
    assert "received fast shutdown request" in database_log and "smart shutdown" not in database_log, database_log


def test_up_after_a_killed_one_stops_its_leftovers_keeps_the_db_and_each_start_its_logs(stack):
    first, first_log = stack("first")
    wait_ready(first, first_log)
    api = rest_api(stack)
    wait_for(lambda: registered(api, "batch_smoke"), 300, "batch_smoke registered", first, first_log)
    api.unpause("batch_smoke")  # DAGs start paused here: the next start must find this one unpaused
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

    # The database was kept, and not migrated again: it is at the revision the first start left.
    assert "metadata DB: at this Airflow's revision, not migrated" in tail(second_log)
    assert "not migrated" not in tail(first_log)
    # (read through the new api-server, from the stack's PostgreSQL)
    assert rest_api(stack).get("/api/v2/dags/batch_smoke")["is_paused"] is False
    # Each start keeps its own component logs; `latest` is the newest.
    logs = stack.home / "logs" / "up"
    starts = sorted(folder for folder in logs.iterdir() if folder.is_dir() and not folder.is_symlink())
    assert len(starts) == 2 and (logs / "latest").resolve() == starts[1].resolve(), starts
    assert all((start / "scheduler.log").stat().st_size > 0 for start in starts), starts

    os.killpg(second.pid, signal.SIGINT)  # Ctrl-C in its terminal
    assert second.wait(timeout=180) != 0
    wait_until_gone(stack.marker, 60)


def test_up_names_the_component_that_died_while_starting_and_stops_the_rest(stack):
    # A dag-processor that cannot start: its number of parsing processes is not a number. It is started beside
    # the api-server and named while the api-server still starts (its log's last lines with it).
    proc, log = stack(extra={"AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "many"})
    assert proc.wait(timeout=600) != 0, tail(log)
    assert "Airflow's dag-processor exited while starting" in tail(log)
    assert 'Failed to convert value to int. Please check "parsing_processes"' in tail(log)
    assert "Airflow is ready" not in tail(log)
    # named before the api-server answered: the scheduler and the triggerer, started only then, never were
    started = {path.name for path in (stack.home / "logs" / "up" / "latest").iterdir()}
    assert "dag-processor.log" in started and not {"scheduler.log", "triggerer.log"} & started, started
    wait_until_gone(stack.marker, 60)


def test_up_restarts_a_component_whose_heartbeat_stops_and_sigterm_to_its_group_stops_everything(stack):
    # A scheduler that hangs while its process lives (here: SIGSTOP) is named and restarted.
    watch = {"UP_WATCH_SECONDS": "2", "UP_STALE_CHECKS": "3",
             "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_THRESHOLD": "15", "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "3"}
    first, first_log = stack("first", watch)
    wait_ready(first, first_log)
    # ready means the execution API answers a task's request at once
    port = stack.env["AIRFLOW__API__PORT"]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/execution/health/ping", timeout=30) as response:
        assert response.status == 200

    hung = stack_sessions(stack.home)["scheduler"]
    os.kill(hung, signal.SIGSTOP)
    wait_for(lambda: "Airflow's scheduler has no fresh heartbeat" in tail(first_log), 300,
             "the watchdog naming the hung scheduler", first, first_log)
    wait_for(lambda: stack_sessions(stack.home)["scheduler"] != hung, 120, "a new scheduler", first, first_log)
    assert hung not in processes_naming(stack.marker)
    assert first.poll() is None, tail(first_log)
    # The watchdog says which restart this is, of how many, and where the component's log is.
    assert re.search(r"restarting it \(1 of 3; log: \S+/logs/up/\S+/scheduler\.log\)", tail(first_log)), tail(first_log)

    # SIGTERM to make up's process group (what `timeout` or a supervisor sends) stops everything: SIGKILL
    # after 20 s of grace; the bound leaves room for a loaded machine (it left components running for minutes).
    os.killpg(first.pid, signal.SIGTERM)
    assert first.wait(timeout=90) != 0
    wait_until_gone(stack.marker, 60)
    assert not (stack.home / "stack.pids").exists()


def test_up_refuses_a_connection_that_names_another_local_endpoint_naming_the_variable(stack):
    proc, log = stack(extra={"AIRFLOW_CONN_AWS_DEFAULT": json.dumps(
        {"conn_type": "aws", "extra": {"region_name": "us-east-1", "endpoint_url": "http://127.0.0.1:4566"}})})
    assert proc.wait(timeout=120) != 0
    message = tail(log)
    assert "names a local endpoint on port 4566" in message and f"LOCALAWS_PORT={stack.env['LOCALAWS_PORT']}" in message
    assert "Airflow is ready" not in message
    wait_until_gone(stack.marker, 60)
