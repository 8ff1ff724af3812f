"""The unit-of-work engine end to end: dag.test() -> prep -> shards -> array jobs -> worker runtime -> collect."""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from airflow.utils.state import DagRunState, TaskInstanceState

from operators.kit.batch import UnitsOfWorkOperator
from tests.system.test_batch_smoke import load_dag

pytestmark = pytest.mark.system


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch):
    monkeypatch.setenv("SHARD_RETRY_DELAY_S", "1")


def outputs(data_root: Path) -> tuple[list[Path], list[Path]]:
    root = data_root / "outputs" / "noop"
    return sorted(root.glob("*/result.parquet")), sorted(root.glob("*/_DONE.json"))


def xcom(run, task_id: str, key: str = "return_value", map_index: int | None = None):
    from sqlalchemy import select

    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        query = select(XComModel.value).where(XComModel.dag_id == run.dag_id, XComModel.run_id == run.run_id,
                                              XComModel.task_id == task_id, XComModel.key == key)
        if map_index is not None:
            query = query.where(XComModel.map_index == map_index)
        values = [json.loads(v) if isinstance(v, str) else v for v in session.scalars(query).all()]
    return values


def xcom_keys(run, task_id: str) -> list[str]:
    from sqlalchemy import select

    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        return sorted(session.scalars(select(XComModel.key).where(
            XComModel.dag_id == run.dag_id, XComModel.run_id == run.run_id, XComModel.task_id == task_id)).all())


def task_instances(run, task_id: str):
    return [ti for ti in run.get_task_instances() if ti.task_id == task_id]


def run_dag(conf, **changes):
    dag = load_dag("units_of_work")
    for name, value in changes.items():
        dag.get_task("run_shard").partial_kwargs[name] = value
    return dag.test(run_conf=conf)


def jobs_named(local_aws, prefix: str) -> list[dict]:
    found = []
    for status in ("SUBMITTED", "PENDING", "RUNNABLE", "STARTING", "RUNNING", "SUCCEEDED", "FAILED"):
        pages = local_aws.batch.get_paginator("list_jobs").paginate(jobQueue="airbatch-cpu", jobStatus=status)
        found += [j for page in pages for j in page["jobSummaryList"] if j["jobName"].startswith(prefix)]
    return found


def worker_pids(worklist_part: str = "") -> list[int]:
    """Batch worker jobs started by this test process's endpoint (not another run's on the machine): the pid of each
    job's outermost process, its sandbox (bwrap, with the job's command line and environment), whose end is the
    job's end, as a container's is."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        text = [c.decode(errors="replace") for c in cmdline]
        if parent == os.getpid() and any(c.endswith("batch-worker") for c in text) \
                and worklist_part in " ".join(text):
            pids.append(int(entry.name))
    return pids


def test_3000_batches_complete_then_an_identical_run_is_entirely_cached(airflow_db, local_aws, data_root):
    conf = {"units": 30000, "rows_per_unit": 1, "bucket_count": 3000, "batches_per_shard": 1000}
    run = run_dag(conf)
    assert run.state == DagRunState.SUCCESS
    [summary] = xcom(run, "summary")
    assert summary["batches"] == 3000 and summary["shards"] == 3
    assert summary["succeeded"] == 3000 and summary["cached"] == 0 and summary["failed"] == 0
    assert summary["units"] == 30000 and len(summary["job_ids"]) == 3  # one array job per shard
    results, markers = outputs(data_root)
    assert len(results) == len(markers) == 3000
    assert not list((data_root / "outputs").rglob(".tmp-*"))
    # mapped instances carry readable names
    names = sorted(ti.rendered_map_index for ti in task_instances(run, "run_shard"))
    assert names[0].startswith("shard 0: batches 0-")
    # a stage's dict is one XCom, not one more per key
    for stage in ("dataset", "prepare", "summary"):
        assert xcom_keys(run, stage) == ["return_value"], stage

    again = run_dag(conf)
    assert again.state == DagRunState.SUCCESS
    [cached] = xcom(again, "summary")
    assert cached["cached"] == 3000 and cached["succeeded"] == 0 and cached["job_ids"] == []
    assert len(outputs(data_root)[0]) == 3000


def test_a_killed_child_fails_the_try_and_the_retry_runs_only_the_missing_batches(airflow_db, local_aws, data_root):
    # a second per batch: the killer has a window of seconds, even on a loaded machine, to find a child mid-slice
    conf = {"units": 600, "bucket_count": 40, "batches_per_shard": 40, "batches_per_child": 10, "sleep_s": 1.0}
    killed: list[int] = []

    def batches_done_by(pid: int) -> int | None:
        """How many of its slice's batches the worker `pid` has finished (None once it is gone)."""
        try:
            args = (Path("/proc") / str(pid) / "cmdline").read_bytes().decode().split("\0")
            environ = (Path("/proc") / str(pid) / "environ").read_bytes().decode().split("\0")
        except OSError:
            return None
        index = int(next((e.split("=", 1)[1] for e in environ if e.startswith("AWS_BATCH_JOB_ARRAY_INDEX=")), 0))
        worklist = json.loads(Path(next(a for a in args if a.endswith(".json"))).read_text())
        per_child = worklist["batches_per_child"]
        keys = [item["key"] for item in worklist["items"][index * per_child:(index + 1) * per_child]]
        return sum((data_root / "outputs" / "noop" / key / "_DONE.json").exists() for key in keys)

    def kill_one_child_mid_run():
        deadline = time.time() + 240
        while time.time() < deadline and not killed:
            for pid in worker_pids():
                done = batches_done_by(pid)
                if done is None or not 0 < done < 10:  # kill it once it has finished some of its ten batches
                    continue
                try:
                    os.kill(pid, signal.SIGTERM)  # a crash: Batch reports exit 143 and does not retry it
                except ProcessLookupError:
                    continue
                killed.append(pid)
                return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_one_child_mid_run, daemon=True)
    killer.start()
    run = run_dag(conf)
    killer.join(timeout=5)
    assert killed, "no worker process was seen"
    assert run.state == DagRunState.SUCCESS
    [ti] = task_instances(run, "run_shard")
    assert ti.try_number == 2  # try 1 failed on the killed child; the retry resumed
    [summary] = xcom(run, "summary")
    assert summary["batches"] == 40 and summary["failed"] == 0
    assert len(summary["job_ids"]) == 2
    # the retry's job ran only what the killed child left undone
    worklists = sorted((data_root / "runs").rglob("worklists/*.json"), key=lambda p: p.stat().st_mtime)
    first, second = [json.loads(p.read_text()) for p in worklists[-2:]]
    assert len(first["items"]) == 40
    assert 0 < len(second["items"]) < 10
    # both tries belong to this task instance: all 40 count as computed here, none as cached
    assert summary["succeeded"] == 40 and summary["cached"] == 0
    results, markers = outputs(data_root)
    assert len(results) == len(markers) == 40  # every output exactly once
    assert not list((data_root / "outputs").rglob(".tmp-*"))


def test_a_changed_parameter_recomputes_every_batch(airflow_db, local_aws, data_root):
    conf = {"units": 200, "bucket_count": 20, "batches_per_shard": 20}
    first = run_dag(conf)
    assert first.state == DagRunState.SUCCESS
    salted = run_dag({**conf, "salt": "v2"})
    assert salted.state == DagRunState.SUCCESS
    [summary] = xcom(salted, "summary")
    assert summary["succeeded"] == 20 and summary["cached"] == 0
    assert len(outputs(data_root)[0]) == 40  # the old outputs stay; the new key has its own


def test_a_bad_input_file_fails_at_prep_naming_the_column_with_nothing_fanned_out(airflow_db, local_aws,
                                                                                    data_root, capfd):
    bad = data_root / "bad.csv"
    bad.write_text("unit_id,seq,amount\nu1,0,1.5\nu2,0,2.5\n")
    before = len(jobs_named(local_aws, "units_of_work"))
    run = run_dag({"input_uri": str(bad), "bucket_count": 10})
    assert run.state == DagRunState.FAILED
    [prepare] = task_instances(run, "prepare")
    assert prepare.state == TaskInstanceState.FAILED
    assert {ti.state for ti in task_instances(run, "run_shard")} <= {TaskInstanceState.UPSTREAM_FAILED}
    assert "missing column(s): 'value'" in capfd.readouterr().out
    assert len(jobs_named(local_aws, "units_of_work")) == before
    assert not list((data_root / "runs").rglob("worklists/*.json"))


def test_failed_units_below_the_quorum_fail_the_shard_and_above_it_are_dead_lettered(airflow_db, local_aws,
                                                                                      data_root):
    conf = {"units": 200, "bucket_count": 20, "batches_per_shard": 20, "fail_units": ["u000007"]}
    strict = run_dag(conf)
    assert strict.state == DagRunState.FAILED
    [ti] = task_instances(strict, "run_shard")
    assert ti.state == TaskInstanceState.FAILED and ti.try_number == 1  # bad data: a retry cannot help, none ran
    [failed_summary] = xcom(strict, "run_shard", key="summary")
    assert failed_summary["failed"] == 1 and failed_summary["failures_by_class"] == {"bad_data": 1}
    assert "u000007" in failed_summary["first_errors"]["bad_data"]
    assert len(list((data_root / "runs").rglob("worklists/*.json"))) == 1  # the bad batch ran once

    lenient = run_dag({**conf, "min_success_ratio": 0.9})
    assert lenient.state == DagRunState.SUCCESS
    [summary] = xcom(lenient, "summary")
    assert summary["failed"] == 1 and summary["cached"] == 19 and summary["units_failed"] >= 1
    import pandas as pd

    dead = pd.read_parquet(summary["dead_letter"])
    assert "u000007" in set(dead["unit_id"]) and set(dead["failure_class"]) == {"bad_data"}
    assert len(dead) == summary["units_failed"]


def test_a_worker_lost_mid_wait_reattaches_without_a_second_submission(airflow_db, local_aws, data_root,
                                                                       monkeypatch):
    original = UnitsOfWorkOperator.wait_until_ended
    lost: list[str] = []

    def wait_until_ended(self, job_id, deadline, terminate_at_deadline=True):
        if not lost:  # the first try's worker dies while the job runs
            lost.append(job_id)
            raise RuntimeError("worker lost mid-wait")
        return original(self, job_id, deadline, terminate_at_deadline)

    monkeypatch.setattr(UnitsOfWorkOperator, "wait_until_ended", wait_until_ended)
    run = run_dag({"units": 300, "bucket_count": 30, "batches_per_shard": 30, "batches_per_child": 5,
                   "sleep_s": 0.1, "salt": "reattach"})
    assert run.state == DagRunState.SUCCESS
    [ti] = task_instances(run, "run_shard")
    assert ti.try_number == 2
    [summary] = xcom(run, "summary")
    assert summary["job_ids"] == lost  # the retry waited for the same job
    assert summary["succeeded"] == 30
    assert len(list((data_root / "runs").rglob("worklists/*.json"))) == 1


def test_deferrable_mode_waits_in_a_trigger(airflow_db, local_aws, data_root, capfd):
    run = run_dag({"units": 100, "bucket_count": 10, "batches_per_shard": 10, "salt": "deferred"}, deferrable=True)
    assert run.state == DagRunState.SUCCESS
    text = capfd.readouterr().out
    assert "Pausing task as DEFERRED" in text and "operators.kit.triggers.BatchJobWaitTrigger" in text
    [summary] = xcom(run, "summary")
    assert summary["succeeded"] == 10


CANARY = "canary-7f3e9b1d-not-for-files"


def test_template_syntax_in_every_string_param_reaches_the_files_literally(airflow_db, local_aws, data_root,
                                                                           monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_CANARY", json.dumps({"conn_type": "generic", "login": CANARY,
                                                            "password": CANARY}))
    secret = "{{ conn.canary.password }}"
    arithmetic = "{{ 6 * 7 }}"
    folder = data_root / "in {{ run_id }}"
    folder.mkdir()
    source = folder / "units.csv"
    source.write_text("unit_id,seq,value\n" + "".join(f"u{i},0,{i}.5\n" for i in range(30))
                      + f"{secret},0,1.0\n{arithmetic},0,2.0\n")
    run = run_dag({"input_uri": str(source), "bucket_count": 4, "batches_per_shard": 4,
                   "salt": f"{secret}|{arithmetic}", "fail_units": [secret, "{% raw %}x"], "min_success_ratio": 0.0})
    assert run.state == DagRunState.SUCCESS
    worklists = list((data_root / "runs").rglob("worklists/*.json"))
    assert worklists
    for path in worklists:
        params = json.loads(path.read_text())["params"]
        assert params["salt"] == f"{secret}|{arithmetic}" and params["fail_units"] == [secret, "{% raw %}x"]
    [results] = list((data_root / "runs").rglob("results/shard-0.json"))
    shard = json.loads(results.read_text())["shard"]
    assert shard["params"]["salt"] == f"{secret}|{arithmetic}"
    [summary] = xcom(run, "summary")
    assert summary["failed"] >= 1 and secret in summary["first_errors"]["bad_data"]  # the unit named by the template
    for path in data_root.rglob("*"):
        if path.is_file():
            assert CANARY.encode() not in path.read_bytes(), f"{path} holds the connection's password"


def shard_jobs(local_aws) -> list[dict]:
    return [j for j in jobs_named(local_aws, "units_of_work-run_shard-shard0") if ":" not in j["jobId"]]


def no_worker_left(deadline_s: float = 60) -> bool:
    deadline = time.time() + deadline_s
    while time.time() < deadline:
        if not worker_pids():
            return True
        time.sleep(0.2)
    return False


@pytest.mark.parametrize("deferrable", [False, True], ids=["sync", "deferrable"])
def test_a_shard_whose_job_never_ends_fails_at_its_timeout_and_the_job_is_terminated(airflow_db, local_aws,
                                                                                      data_root, deferrable):
    before = {j["jobId"] for j in shard_jobs(local_aws)}
    run = run_dag({"units": 20, "bucket_count": 2, "batches_per_shard": 2, "batches_per_child": 1, "sleep_s": 3000,
                   # 30 s: on a busy machine the shard's job is submitted well inside its timeout
                   "shard_timeout_minutes": 0.5, "salt": f"timeout-{deferrable}"}, retries=0, deferrable=deferrable)
    assert run.state == DagRunState.FAILED
    [ti] = task_instances(run, "run_shard")
    assert ti.state == TaskInstanceState.FAILED
    [job] = [j for j in shard_jobs(local_aws) if j["jobId"] not in before]
    deadline = time.time() + 60
    while job["status"] != "FAILED" and time.time() < deadline:  # terminating a RUNNING child takes a moment
        time.sleep(0.2)
        job = local_aws.batch.describe_jobs(jobs=[job["jobId"]])["jobs"][0]
    assert job["status"] == "FAILED", job
    assert no_worker_left(), f"worker processes still running: {worker_pids()}"


def test_a_worker_that_cannot_write_its_outputs_reports_its_own_error_and_is_not_retried(airflow_db, local_aws,
                                                                                         data_root, monkeypatch):
    from operators.kit import engine

    original = engine.write_worklist

    def worklist_into_a_store_that_refuses_writes(spec, *args, **kwargs):
        # runs/ is read-only to a job (its role may only read it): the workers' output store refuses their writes,
        # while the Airflow side may write there
        return original(dataclasses.replace(spec, output_root=f"{data_root}/runs/airbatch-no-write/outputs/noop"),
                        *args, **kwargs)

    monkeypatch.setattr(engine, "write_worklist", worklist_into_a_store_that_refuses_writes)
    run = run_dag({"units": 40, "bucket_count": 4, "batches_per_shard": 4, "batches_per_child": 2,
                   "salt": "denied"})
    assert run.state == DagRunState.FAILED
    [ti] = task_instances(run, "run_shard")
    assert ti.try_number == 1  # not retried: a retry would be refused the same way
    [summary] = xcom(run, "run_shard", key="summary")
    assert summary["failures_by_class"] == {"permission_denied": 4}
    first = summary["first_errors"]["permission_denied"]
    assert "Read-only file system" in first and "runs/airbatch-no-write" in first, first


RUN_ELSEWHERE = """
import json, os, sys
from pathlib import Path
sys.path.insert(0, os.environ["REPO_ROOT"])
keep = {k: os.environ[k] for k in ("AIRFLOW_CONN_AWS_DEFAULT", "DATA_ROOT")}
from localaws.stack import configure
configure(Path(sys.argv[1]))
os.environ.update(keep)
from tests.system.test_batch_smoke import load_dag
run = load_dag("units_of_work").test(run_conf=json.loads(sys.argv[2]))
print("RUN STATE", run.state)
"""


def test_two_runs_over_the_same_data_at_the_same_time_compute_each_batch_once(airflow_db, local_aws, data_root,
                                                                              tmp_path):
    import shutil
    import subprocess
    import sys

    from localaws.stack import REPO

    source = data_root / "units.csv"
    source.write_text("unit_id,seq,value\n" + "".join(f"u{i:03d},0,{i}.5\n" for i in range(160)))
    conf = {"input_uri": str(source), "bucket_count": 16, "batches_per_shard": 16, "batches_per_child": 2,
            "sleep_s": 1.0, "salt": "concurrent"}
    runs = []
    for name in ("a", "b"):  # each process has its own copy of the migrated metadata DB
        home = tmp_path / f"home-{name}"
        home.mkdir()
        shutil.copy(airflow_db, home / "airflow.db")
        runs.append(subprocess.Popen([sys.executable, "-c", RUN_ELSEWHERE, str(home), json.dumps(conf)],
                                     env={**os.environ, "REPO_ROOT": str(REPO)}, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True))
    outputs_of_runs = [run.communicate(timeout=540)[0] for run in runs]
    for text in outputs_of_runs:
        assert "RUN STATE success" in text, text[-3000:]
    worklists = [json.loads(p.read_text()) for p in (data_root / "runs").rglob("worklists/*.json")]
    submitted = [item["key"] for w in worklists for item in w["items"]]
    assert len(submitted) == len(set(submitted)) == 16, f"{len(submitted)} batch submissions for 16 batches"
    markers = [json.loads(p.read_text()) for p in (data_root / "outputs" / "noop").glob("*/_DONE.json")]
    assert len(markers) == 16
    assert not list((data_root / "outputs" / "noop" / "_claims").glob("*.json"))  # released once the jobs ended
