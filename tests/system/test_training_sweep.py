"""training_sweep end to end against the local endpoint: capacity shortage, throttling, lost hosts, history, reuse."""
from __future__ import annotations

import json
import re
from pathlib import Path

import duckdb
import pytest

from airflow.utils.state import DagRunState

from localaws.batch import LOSE_HOSTS_TAG, LOST_HOST_REASON, THROTTLE_SUBMITS_TAG
from tests.system.test_batch_smoke import load_dag
from tests.system.test_units_of_work import xcom

pytestmark = pytest.mark.system


@pytest.fixture(autouse=True)
def quick_backoff(monkeypatch):
    monkeypatch.setenv("BATCH_SUBMIT_BACKOFF_S", "0.05")
    monkeypatch.setenv("SHARD_RETRY_DELAY_S", "1")


def trained_rows(data_root: Path):
    """Every configuration row the workload ever wrote (done batches only)."""
    files = [p for p in (data_root / "outputs" / "sweep_train").glob("*/result.parquet")
             if (p.parent / "_DONE.json").exists()]
    if not files:
        return []
    return duckdb.sql(f"SELECT config_id, config_key, status FROM read_parquet({[str(f) for f in files]})").fetchall()


def outbox(data_root: Path, kind: str) -> list[dict]:
    return [m for m in (json.loads(p.read_text()) for p in sorted((data_root / "outbox").glob("*.json")))
            if m["kind"] == kind]


def history(data_root: Path, table: str, where: str = "true") -> list[tuple]:
    glob = data_root / "history" / table / "*" / "*.parquet"
    return duckdb.sql(f"SELECT * FROM read_parquet('{glob}', hive_partitioning = true) WHERE {where}").fetchall()


@pytest.mark.parametrize("deferrable", [False, True], ids=["sync", "deferrable"])
def test_no_capacity_moves_to_the_fallback_queue_with_throttling_and_a_lost_host(airflow_db, local_aws, data_root,
                                                                                capfd, deferrable):
    """The same sweep in both wait modes: the capacity watch in the task (sync), in the triggerer (deferrable)."""
    batch = local_aws.batch
    ondemand_queue = batch.describe_job_queues(jobQueues=["airbatch-cpu-ondemand"])["jobQueues"][0]["jobQueueArn"]
    ondemand_ce = batch.describe_compute_environments(computeEnvironments=["airbatch-cpu-ondemand"])[
        "computeEnvironments"][0]["computeEnvironmentArn"]
    batch.update_compute_environment(computeEnvironment="airbatch-cpu", state="DISABLED")
    batch.tag_resource(resourceArn=ondemand_queue, tags={THROTTLE_SUBMITS_TAG: "2"})
    batch.tag_resource(resourceArn=ondemand_ce, tags={LOSE_HOSTS_TAG: "1"})
    sweep = {"configurations": [
        {"id": "l2-small", "hyperparameters": {"l2": 0.1}},
        {"id": "l2-mid", "hyperparameters": {"l2": 3.0}},
        {"id": "l2-big", "hyperparameters": {"l2": 300.0}},
        {"id": "starved", "hyperparameters": {"min_train_labels": 1_000_000}},
    ]}
    try:
        dag = load_dag("training_sweep")
        dag.get_task("run_shard").partial_kwargs["deferrable"] = deferrable
        run = dag.test(run_conf={
            "sweep": sweep, "dataset_groups": 2, "dataset_weeks": 10, "dataset_labels_per_week": 400,
            "configs_per_batch": 1, "batches_per_child": 1, "runnable_timeout_s": 3, "notify_each_failure": True})
    finally:
        batch.update_compute_environment(computeEnvironment="airbatch-cpu", state="ENABLED")
        batch.untag_resource(resourceArn=ondemand_queue, tagKeys=[THROTTLE_SUBMITS_TAG])
        batch.untag_resource(resourceArn=ondemand_ce, tagKeys=[LOSE_HOSTS_TAG])
    assert run.state == DagRunState.SUCCESS
    [summary] = xcom(run, "summary")
    text = capfd.readouterr().out
    assert "capacity failover: AWS Batch job " in text
    # deferrable: the trigger saw the shortage, the task failed over between two deferred waits
    assert ("handing it back to the task for the capacity failover" in text) == deferrable

    # the shortage was recorded, the unstarted work went to the fallback queue and each configuration ran once
    [shortage] = summary["capacity_shortages"]
    assert shortage["queue"] == "airbatch-cpu" and shortage["fallback"] == "airbatch-cpu-ondemand"
    rows = trained_rows(data_root)
    assert sorted(r[0] for r in rows) == ["l2-big", "l2-mid", "l2-small", "starved"]
    assert summary["counts"] == {"trained": 3, "failed": 1}
    assert summary["throttled_submits"] == 2
    configs = {r[0]: r for r in duckdb.sql(
        f"SELECT config_id, queue, attempts, status, failure_class, error FROM read_parquet("
        f"'{data_root}/history/configurations/*/*.parquet')").fetchall()}
    assert {c[1] for c in configs.values()} == {"airbatch-cpu-ondemand"}
    assert sorted(c[2] for c in configs.values()) == [1, 1, 1, 2]  # one host lost, retried by Batch
    assert configs["starved"][3:5] == ("failed", "no_fit") and "too_few_labels" in configs["starved"][5]

    # every status change is in the history: the shortage, the lost host's attempt, the ends
    events = history(data_root, "events")
    statuses = [e[7] for e in events]
    assert "CAPACITY_SHORTAGE" in statuses and statuses.count("SUCCEEDED") >= 4
    assert any(e[8] == LOST_HOST_REASON for e in events)

    # the leaderboard ranks the trained ones; the failure is reported with its class and first error
    assert [leader["config_id"] for leader in summary["leaderboard"]][:1] != ["starved"]
    assert len(summary["leaderboard"]) == 3
    [message] = outbox(data_root, "sweep")
    assert "3 trained" in message["subject"] and "1 failed" in message["subject"]
    assert "no_fit: 1; first error: configuration starved: no unit could be fitted" in message["body"]
    assert "capacity shortage" in message["body"] and "airbatch-cpu-ondemand" in message["body"]
    [failed] = outbox(data_root, "configuration_failed")
    assert failed["data"]["config_id"] == "starved" and failed["data"]["failure_class"] == "no_fit"
    report = Path(summary["report"]).read_text()
    assert "## Leaderboard" in report and "no_fit" in report


def test_a_resubmitted_sweep_trains_only_the_new_configurations(airflow_db, local_aws, data_root):
    dag = load_dag("training_sweep")
    first = dag.test(run_conf={"sweep": {"configurations": [
        {"id": "a", "hyperparameters": {"l2": 1.0}}, {"id": "b", "hyperparameters": {"l2": 2.0}, "resource_class": "GPU"},
        {"id": "c", "hyperparameters": {"l2": 3.0}}]}, "trainer": "trivial"})
    assert first.state == DagRunState.SUCCESS
    [summary] = xcom(first, "summary")
    assert summary["counts"] == {"trained": 3} and len(summary["job_ids"]) == 2  # one array job per queue
    queues = dict(duckdb.sql(f"SELECT config_id, queue FROM read_parquet('{data_root}/history/configurations/*/*.parquet')"
                             ).fetchall())
    assert queues == {"a": "airbatch-cpu", "b": "airbatch-gpu", "c": "airbatch-cpu"}
    again = dag.test(run_conf={"sweep": {"grid": {"l2": [1.0, 2.0, 3.0, 4.0, 5.0]}, "id_prefix": "again"},
                               "trainer": "trivial"})
    assert again.state == DagRunState.SUCCESS
    [summary] = xcom(again, "summary")
    assert summary["counts"] == {"cached": 3, "trained": 2}
    keys = [r[1] for r in trained_rows(data_root)]
    assert len(keys) == len(set(keys)) == 5  # nothing trained twice
    # the history answers across sweeps
    per_sweep = history(data_root, "configurations", "status = 'trained'")
    assert len(per_sweep) == 5
    # all of it trained before: nothing is submitted, and the sweep still reports and notifies
    third = dag.test(run_conf={"sweep": {"grid": {"l2": [5.0, 1.0]}}, "trainer": "trivial"})
    assert third.state == DagRunState.SUCCESS
    [summary] = xcom(third, "summary")
    assert summary["counts"] == {"cached": 2} and summary["job_ids"] == []
    assert len(trained_rows(data_root)) == 5 and len(outbox(data_root, "sweep")) == 3


def test_a_bad_spec_fails_before_anything_is_submitted(airflow_db, local_aws, data_root):
    run = load_dag("training_sweep").test(run_conf={"sweep": {"configurations": [
        {"id": "a", "hyperparameters": {"l2": -1}}, {"id": "a", "hyperparameters": {"depth": 3}}]}})
    assert run.state == DagRunState.FAILED
    [prepare] = [ti for ti in run.get_task_instances() if ti.task_id == "prepare"]
    assert prepare.state == "failed"
    assert not (data_root / "outputs" / "sweep_train").exists()


def test_identical_configurations_in_one_sweep_are_trained_once_and_each_gets_the_outcome(airflow_db, local_aws,
                                                                                       data_root):
    """`l2: 1` and `l2: 1.0` (and a GPU copy) are one training: one row trained, the repeats report its outcome."""
    run = load_dag("training_sweep").test(run_conf={"sweep": {"configurations": [
        {"id": "one", "hyperparameters": {"l2": 1}}, {"id": "one-float", "hyperparameters": {"l2": 1.0}},
        {"id": "one-gpu", "hyperparameters": {"l2": 1}, "resource_class": "GPU"},
        {"id": "two", "hyperparameters": {"l2": 2.0}}]}, "trainer": "trivial"})
    assert run.state == DagRunState.SUCCESS
    [summary] = xcom(run, "summary")
    assert summary["counts"] == {"trained": 2, "duplicate": 2} and summary["duplicates"] == 2
    assert len(summary["job_ids"]) == 1  # the CPU queue's array job only: the GPU configuration repeats "one"
    assert sorted(r[0] for r in trained_rows(data_root)) == ["one", "two"]
    rows = {r[0]: r[1:] for r in duckdb.sql(
        f"SELECT config_id, status, score FROM read_parquet('{data_root}/history/configurations/*/*.parquet')"
    ).fetchall()}
    assert rows["one-float"] == rows["one-gpu"] == ("duplicate", rows["one"][1]) and rows["one"][0] == "trained"
    assert [leader["config_id"] for leader in summary["leaderboard"]] == ["one", "two"]  # each training ranked once
    [message] = outbox(data_root, "sweep")
    assert "2 configuration(s) repeat an earlier configuration's hyper-parameters: trained once" in message["body"]
    assert "one-float (as one), one-gpu (as one)" in message["body"]


def test_the_forms_defaults_run_the_built_in_grid_to_success(airflow_db, local_aws, data_root, capfd):
    """Trigger with nothing changed in the form: the built-in grid trains, ranks, costs and reports."""
    from operators.pipelines.sweep.pipeline import DEFAULT_SWEEP

    run = load_dag("training_sweep").test(run_conf={})
    assert run.state == DagRunState.SUCCESS
    [summary] = xcom(run, "summary")
    size = len(DEFAULT_SWEEP["grid"]["l2"]) * len(DEFAULT_SWEEP["grid"]["holdout_days"])
    assert summary["configurations"] == size and summary["counts"] == {"trained": size}
    # each configuration shown by what tells it apart: the grid's two hyper-parameters
    assert len(summary["leaderboard"]) == 5
    assert all(re.fullmatch(r"holdout_days=(14|28), l2=[0-9.]+", leader["settings"]) for leader in summary["leaderboard"])
    # costed from the sweep's Batch jobs, as a unit pipeline's collect step costs its run
    assert sum(shard["jobs"] for shard in summary["cost"]["shards"]) >= 1 and summary["cost"]["cost"] > 0
    [cost_file] = (data_root / "runs" / "training_sweep").glob("*/cost.json")
    assert json.loads(cost_file.read_text())["cost"] == summary["cost"]["cost"]
    assert summary["note"].startswith(f"{size} configurations: {size} trained; best default-")
    assert [s["run_id"] for s in summary["history_sweeps"]] == [run.run_id]
    # the summary task's log: the leaderboard as a table, not the returned dict
    out = capfd.readouterr().out
    assert "rank  configuration  score" in out and "Returned value was: {'dag_id': 'training_sweep'" not in out
    assert "## Cost" in Path(summary["report"]).read_text()
    # its figures in CloudWatch (namespace airbatch, Pipeline=training_sweep) and its alarm's state, for the run view
    [record] = [json.loads(p.read_text()) for p in (data_root / "runs" / "training_sweep").glob("*/alarms.json")]
    assert record["metrics"]["ConfigurationsTrained"] == size and record["metrics"]["RunFailed"] == 0
    assert record["metrics"]["BestScore"] == summary["leaderboard"][0]["score"]
    assert {a["name"]: a["state"] for a in record["alarms"]} == {"airbatch-training_sweep-failed-run": "OK"}
    import boto3

    cloudwatch = boto3.client("cloudwatch", **local_aws.client_kwargs)
    listed = cloudwatch.list_metrics(Namespace="airbatch", Dimensions=[{"Name": "Pipeline", "Value": "training_sweep"}])
    assert {"BestScore", "ConfigurationsTrained", "DurationSeconds", "CostUSD"} <= {m["MetricName"] for m in listed["Metrics"]}
