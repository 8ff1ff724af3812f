"""packaging_inference_daily/monthly end to end through dag.test() against the local endpoint: the latest approved
model, a skip without one, a failure for a damaged one, daily windows, caching by model version, and approval
starting inference."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pendulum
import pytest

from airflow.utils.state import DagRunState, TaskInstanceState

from operators.pipelines.packaging import inventory
from operators.pipelines.packaging.inference import register_approved_models
from tests.system.test_batch_smoke import load_dag
from tests.system.test_packaging_training import MONDAY, SMALL as TRAINING, model_events, run_training
from tests.system.test_units_of_work import task_instances, xcom

pytestmark = pytest.mark.system

#: The training test's products (10 groups x 50, seed 3) from 2026-02-23, 7 new products a day.
SMALL = {"dataset_groups": 10, "dataset_products_per_group": 50, "dataset_new_products_per_day": 7,
         "dataset_start_date": "2026-02-23", "dataset_seed": 3, "bucket_count": 4, "queue": "airbatch-cpu"}
MARCH = pendulum.datetime(2026, 3, 1, tz="UTC")


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch):
    monkeypatch.setenv("SHARD_RETRY_DELAY_S", "1")


def run(scope: str, conf=None, **when):
    return load_dag(f"packaging_inference_{scope}").test(run_conf={**SMALL, **(conf or {})}, **when)


def added(since: str, until: str) -> int:
    return inventory.products_added(since=since, until=until, groups=10, products_per_group=50, new_per_day=7,
                                    start_date="2026-02-23")


def approve_true_models(shift: float = 0.0, version: str = "v1") -> str:
    models = inventory.true_models(10, seed=3)
    models["intercept"] += shift
    return register_approved_models(models, version, by="test")


def current_predictions(data_root: Path, scope: str) -> tuple[pd.DataFrame, dict]:
    folder = data_root / "predictions" / "packaging" / scope / "current"
    return pd.read_parquet(folder / "predictions.parquet"), json.loads((folder / "run.json").read_text())


def assert_refused_at_dataset(refused) -> None:
    """The run failed at its first task, `dataset`, and nothing after it ran."""
    assert refused.state == DagRunState.FAILED
    [dataset] = task_instances(refused, "dataset")
    assert dataset.state == TaskInstanceState.FAILED
    assert all(ti.state == TaskInstanceState.UPSTREAM_FAILED for name in ("prepare", "plan", "summary", "publish")
               for ti in task_instances(refused, name))


def assert_skipped_at_dataset(skipped) -> None:
    """The run skipped itself at its first task, `dataset`: nothing after it ran, and the run is not red."""
    assert skipped.state == DagRunState.SUCCESS
    assert all(ti.state == TaskInstanceState.SKIPPED
               for name in ("dataset", "prepare", "plan", "run_shard", "summary", "publish")
               for ti in task_instances(skipped, name))


def run_note(dag_run) -> str | None:
    from sqlalchemy import select

    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    with create_session() as session:
        return session.scalars(select(DagRun).where(DagRun.dag_id == dag_run.dag_id,
                                                    DagRun.run_id == dag_run.run_id)).one().note


def test_inference_before_any_approved_model_skips_itself_and_says_why(airflow_db, local_aws, data_root):
    skipped = run("monthly", logical_date=MARCH)
    assert_skipped_at_dataset(skipped)
    assert not (data_root / "datasets").exists() and not (data_root / "outputs").exists()
    assert not list((data_root / "outbox").glob("*-failure.json"))
    [message] = [json.loads(p.read_text()) for p in (data_root / "outbox").glob("*-skipped.json")]
    assert message["subject"] == "[packaging_inference_monthly] SKIPPED at dataset: nothing to do"
    why = "no approved version of model 'packaging' yet: this DAG runs by itself when one is approved"
    assert why in message["body"] and "run packaging_training" in message["body"]
    # the run's note, in the grid and the run view, says the same
    assert run_note(skipped).startswith(f"skipped at dataset: {why}")

    # a pending version is not a model to score with either: the daily run skips itself too
    from operators.kit.registry import Registry

    Registry(str(data_root), "packaging").register("pending-1", metrics={}, input_stats={}, lineage={},
                                                   proposed="review", reasons=[], artifact="models.parquet")
    daily = run("daily", logical_date=MARCH)
    assert_skipped_at_dataset(daily)
    assert run_note(daily).startswith(f"skipped at dataset: {why}")
    assert not (data_root / "outputs").exists()


def test_a_damaged_approved_model_fails_the_first_task_naming_file_and_version_before_any_job(
        airflow_db, local_aws, data_root):
    from tests.system.test_units_of_work import jobs_named

    version = approve_true_models()
    artifact = data_root / "published" / "packaging" / "versions" / version / "models.parquet"
    artifact.write_bytes(artifact.read_bytes()[:100])  # truncated: the footer and its magic bytes are gone
    before = len(jobs_named(local_aws, "packaging_inference"))
    refused = run("monthly", logical_date=MARCH)
    assert_refused_at_dataset(refused)
    assert len(jobs_named(local_aws, "packaging_inference")) == before  # no Batch job was submitted
    assert not (data_root / "outputs").exists()
    # an inference run (no evaluator, no success summary) notifies its failure, naming the file and the version
    [message] = [json.loads(p.read_text()) for p in (data_root / "outbox").glob("*-failure.json")]
    assert message["subject"] == "[packaging_inference_monthly] FAILED at dataset"
    assert (f"'packaging' model version {version}: its artifact DATA_ROOT/published/packaging/versions/{version}/"
            "models.parquet cannot be read as Parquet") in message["body"]
    assert f"The file itself: {artifact}" in message["body"]


def test_monthly_scores_the_inventory_caches_a_rerun_and_recomputes_for_a_new_model(airflow_db, local_aws,
                                                                                    data_root):
    version = approve_true_models()
    first = run("monthly", logical_date=MARCH)
    assert first.state == DagRunState.SUCCESS
    [summary] = xcom(first, "summary")
    assert summary["model_version"] == version and summary["window"] == ["1970-01-01", "2026-03-01"]
    assert summary["succeeded"] == summary["batches"] > 1 and summary["cached"] == 0
    predictions, lineage = current_predictions(data_root, "monthly")
    assert len(predictions) == added("1970-01-01", "2026-03-01") == 500 + 5 * 7
    assert set(predictions["model_version"]) == {version} and predictions["product_id"].is_unique
    assert lineage["model"]["version"] == version and lineage["workload_params"]["model_version"] == version
    assert lineage["job_ids"] and lineage["window"] == summary["window"]
    [extra] = xcom(first, "publish")
    assert extra["version"] == version and extra["products"] == len(predictions)
    assert Path(extra["uri"]).parent.name == "run_date=2026-03-01" and Path(extra["uri"]).exists()
    # the published probabilities are the model's: check one product by hand
    row = predictions.iloc[0]
    models = inventory.true_models(10, seed=3)
    model = models[(models["product_group"] == row["product_group"]) & (models["package_type"] == "box")].iloc[0]
    products = pd.concat(inventory.day_products(d, groups=10, products_per_group=50, new_per_day=7,
                                                start_date="2026-02-23", seed=3) for d in range(6))
    product = products.set_index("product_id").loc[row["product_id"]]
    eta = model["intercept"] + sum(model[f"coef_{f}"] * product[f]
                                   for f in ("weight_kg", "longest_side_cm", "fragility", "liquid"))
    assert row["p_damage_box"] == pytest.approx(1 / (1 + np.exp(-eta)))
    assert predictions["recommended_package"].notna().all()

    # the same inventory and model, run again (as a run without a data interval, the way an approval starts
    # one, on the same day): every batch cached
    again = run("monthly", logical_date=None, run_after=MARCH.add(hours=10))
    assert again.state == DagRunState.SUCCESS
    [cached] = xcom(again, "summary")
    assert cached["window"] == summary["window"] and cached["cached"] == cached["batches"] == summary["batches"]
    assert cached["succeeded"] == 0

    # a new approved version recomputes every batch
    newer = approve_true_models(shift=0.5, version="v2")
    third = run("monthly", logical_date=None, run_after=MARCH.add(hours=12))
    assert third.state == DagRunState.SUCCESS
    [recomputed] = xcom(third, "summary")
    assert recomputed["model_version"] == newer and recomputed["cached"] == 0
    assert recomputed["succeeded"] == recomputed["batches"] == summary["batches"]
    rescored, lineage = current_predictions(data_root, "monthly")
    assert set(rescored["model_version"]) == {newer} and lineage["model"]["version"] == newer
    merged = rescored.merge(predictions, on="product_id", suffixes=("", "_before"))
    assert (merged["p_damage_bag"] > merged["p_damage_bag_before"]).all()
    assert len(list((data_root / "predictions" / "packaging" / "monthly" / "run_date=2026-03-01").glob("*.parquet"))) == 3


def test_daily_runs_score_only_the_products_added_since_the_last_successful_run(airflow_db, local_aws, data_root):
    approve_true_models()
    day = pendulum.datetime(2026, 3, 2, tz="UTC")
    first = run("daily", logical_date=day)  # data interval [03-01, 03-02); no run before: that day
    assert first.state == DagRunState.SUCCESS
    [summary] = xcom(first, "summary")
    assert summary["window"] == ["2026-03-01", "2026-03-02"]
    assert current_predictions(data_root, "daily")[1]["products"] == added("2026-03-01", "2026-03-02") == 7

    later = run("daily", logical_date=day.add(days=3))  # two days skipped: from the last success's end
    assert later.state == DagRunState.SUCCESS
    [summary] = xcom(later, "summary")
    assert summary["window"] == ["2026-03-02", "2026-03-05"]
    predictions, _ = current_predictions(data_root, "daily")
    assert len(predictions) == added("2026-03-02", "2026-03-05") == 21
    assert pd.to_datetime(predictions["added_on"]).dt.strftime("%Y-%m-%d").between("2026-03-02", "2026-03-04").all()

    # a run with no data interval (started by an approval) two days later: from the end of the last published
    # window, which Airflow's prev_data_interval_end_success does not know for such runs
    approved = run("daily", logical_date=None, run_after=day.add(days=5, hours=15))
    assert approved.state == DagRunState.SUCCESS
    [summary] = xcom(approved, "summary")
    assert summary["window"] == ["2026-03-05", "2026-03-07"]
    assert len(current_predictions(data_root, "daily")[0]) == added("2026-03-05", "2026-03-07") == 14

    # a backfilled older day: published under its run_date=, but current/ keeps the newer window, and says why
    backfill = run("daily", logical_date=day.add(days=1))
    assert backfill.state == DagRunState.SUCCESS
    [summary] = xcom(backfill, "summary")
    assert summary["window"] == ["2026-03-02", "2026-03-03"]
    [extra] = xcom(backfill, "publish")
    assert extra["made_current"] is False and extra["not_current"]["current_run"] == approved.run_id
    assert "its window ends 2026-03-03, before the current predictions' (2026-03-07" in extra["not_current"]["reason"]
    assert Path(extra["uri"]).parent.name == "run_date=2026-03-03" and len(pd.read_parquet(extra["uri"])) == 7
    predictions, lineage = current_predictions(data_root, "daily")
    assert lineage["run_id"] == approved.run_id and len(predictions) == 14


def test_an_approval_starts_inference_with_the_new_version(airflow_db, local_aws, data_root):
    for scope in ("daily", "monthly"):
        timetable = load_dag(f"packaging_inference_{scope}").timetable
        assert type(timetable).__name__ == "AssetOrTimeSchedule"
        assert timetable.asset_condition.name == "packaging_models"

    from sqlalchemy import delete, select, update

    from airflow.models.asset import AssetDagRunQueue, AssetModel
    from airflow.models.dag import DagModel
    from airflow.utils.session import create_session

    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.dagbag import BundleDagBag, sync_bag_to_db

    from localaws.stack import REPO

    inference_dags = ("packaging_inference_daily", "packaging_inference_monthly")
    DagBundlesManager().sync_bundles_to_db()
    for dag_id in inference_dags:  # registered as the dag-processor would (a fresh DB has no row for them yet)
        bag = BundleDagBag(dag_folder=str(REPO / "dags" / f"{dag_id}.py"), bundle_path=REPO / "dags",
                           bundle_name="dags-folder")
        sync_bag_to_db(bag, "dags-folder", None)
    with create_session() as session:  # no scheduler consumes the queue here: start from an empty one
        session.execute(delete(AssetDagRunQueue).where(AssetDagRunQueue.target_dag_id.in_(inference_dags)))
        # The inference DAGs start paused (scheduled DAGs do), and Airflow queues an Asset event's runs only
        # for unpaused DAGs: their schedules are on here, as a user turns them on.
        session.execute(update(DagModel).where(DagModel.dag_id.in_(inference_dags)).values(is_paused=False))
    training = run_training(logical_date=MONDAY)
    assert training.state == DagRunState.SUCCESS
    [evaluation] = xcom(training, "evaluate")
    version = evaluation["version"]
    assert model_events()[-1]["version"] == version
    # the approval's Asset event queued a run of each inference DAG, as the scheduler will start them
    with create_session() as session:
        queued = set(session.scalars(
            select(AssetDagRunQueue.target_dag_id).join(AssetModel, AssetDagRunQueue.asset_id == AssetModel.id)
            .where(AssetModel.name == "packaging_models")))
    assert set(inference_dags) <= queued

    started = run("monthly", {**TRAINING_SIZES, "dataset_start_date": "2026-01-05"}, logical_date=None,
                  run_after=MONDAY.add(hours=9))
    assert started.state == DagRunState.SUCCESS
    [summary] = xcom(started, "summary")
    assert summary["model_version"] == version and summary["succeeded"] == summary["batches"]
    predictions, lineage = current_predictions(data_root, "monthly")
    assert set(predictions["model_version"]) == {version} and lineage["model"]["approved_by"] == "thresholds"


#: The inventory of the training test's products (TRAINING: 10 groups x 50, seed 3).
TRAINING_SIZES = {"dataset_groups": TRAINING["dataset_groups"],
                  "dataset_products_per_group": TRAINING["dataset_products_per_group"],
                  "dataset_seed": TRAINING["dataset_seed"]}
