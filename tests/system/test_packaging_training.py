"""packaging_training end to end through dag.test() against the local endpoint: weekly labels, evaluation, review, publish."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pendulum
import pytest

from airflow.utils.state import DagRunState, TaskInstanceState

from tests.system.test_batch_smoke import load_dag
from tests.system.test_pricing_pipeline import outbox, respond_when_asked
from tests.system.test_units_of_work import task_instances, xcom

pytestmark = pytest.mark.system

#: 40 units (4 package types x 10 groups), 2,000 labels a week from 2025-11-03: 10 weeks before MONDAY.
SMALL = {"dataset_groups": 10, "dataset_products_per_group": 50, "dataset_labels_per_week": 2000,
         "dataset_start_date": "2025-11-03", "dataset_seed": 3, "bucket_count": 8, "rows_per_batch": 2000,
         "queue": "airbatch-cpu"}
MONDAY = pendulum.datetime(2026, 1, 12, tz="UTC")
#: A rougher carrier from three weeks before the next run: the newest labels (and the holdout) change.
DRIFT = {"dataset_drift": 0.5, "dataset_drift_from": "2025-12-29"}


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch):
    monkeypatch.setenv("SHARD_RETRY_DELAY_S", "1")


def run_training(conf=None, logical_date=MONDAY):
    return load_dag("packaging_training").test(run_conf={**SMALL, **(conf or {})}, logical_date=logical_date)


def current_version(data_root: Path) -> str | None:
    pointer = data_root / "registry" / "packaging" / "current.json"
    return json.loads(pointer.read_text())["version"] if pointer.exists() else None


def published_version(data_root: Path) -> str | None:
    pointer = data_root / "published" / "packaging" / "current" / "version.json"
    return json.loads(pointer.read_text())["version"] if pointer.exists() else None


def model_events() -> list[dict]:
    from sqlalchemy import select

    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session

    with create_session() as session:
        return [event.extra for event in session.scalars(
            select(AssetEvent).join(AssetModel, AssetEvent.asset_id == AssetModel.id)
            .where(AssetModel.name == "packaging_models").order_by(AssetEvent.id))]


def test_weekly_runs_train_on_growing_labels_approve_and_publish(airflow_db, local_aws, data_root):
    events_before = len(model_events())
    first = run_training()
    assert first.state == DagRunState.SUCCESS
    [prepared] = xcom(first, "prepare")
    assert prepared["window"] == ["2024-01-15", "2026-01-12"] and prepared["rows_ok"] == 10 * 2000
    [summary] = xcom(first, "notify")
    assert summary["fanout"]["succeeded"] == summary["fanout"]["batches"] > 1
    assert summary["decision"] == {**summary["decision"], "status": "Approved", "by": "thresholds"}
    [evaluation] = xcom(first, "evaluate")
    version = evaluation["version"]
    assert current_version(data_root) == published_version(data_root) == version
    models = pd.read_parquet(data_root / "published" / "packaging" / "current" / "models.parquet")
    assert len(models) == 40 and (models["status"] == "ok").mean() > 0.9
    assert models["holdout_auc"].median() > 0.7 and models["coef_fragility"].median() > 0
    [event] = model_events()[events_before:]
    assert event["version"] == version and event["uri"].endswith("published/packaging/current/models.parquet")
    [message] = outbox(data_root, "success")
    assert f"version {version}" in message["subject"] and "units fitted" in message["body"]

    # a week later the labels have grown by one week; nothing moved, so it is approved against the first
    second = run_training(logical_date=MONDAY.add(weeks=1))
    assert second.state == DagRunState.SUCCESS
    [later] = xcom(second, "evaluate")
    assert later["metrics"]["labels"] == 11 * 2000
    assert later["comparison"]["previous_version"] == version
    assert later["comparison"]["labels_change"] == pytest.approx(0.1)
    assert later["proposal"] == "approve", later["reasons"]
    assert current_version(data_root) == published_version(data_root) == later["version"]
    assert [e["version"] for e in model_events()[events_before:]] == [version, later["version"]]


def test_a_drifted_week_goes_to_review_and_a_rejection_keeps_the_old_model(airflow_db, local_aws, data_root):
    first = run_training()
    assert first.state == DagRunState.SUCCESS
    approved = current_version(data_root)
    assert approved is not None

    answered: list[str] = []
    pages: list[dict] = []
    reviewer = respond_when_asked("packaging_training", "Reject", "sam", answered, pages)
    drifted = run_training(DRIFT, logical_date=MONDAY.add(weeks=1))
    reviewer.join(timeout=5)
    assert answered == [drifted.run_id] and drifted.state == DagRunState.SUCCESS
    [evaluation] = xcom(drifted, "evaluate")
    assert evaluation["proposal"] == "review"
    assert any(reason.startswith(("label_shift", "log_loss_increase")) for reason in evaluation["reasons"])
    assert evaluation["comparison"]["label_shift"] > 0.02
    [page] = pages
    assert page["subject"] == f"Approve packaging version {evaluation['version']}?"
    assert all(line in page["body"] for line in evaluation["lines"])
    [decision] = xcom(drifted, "decide")
    assert decision == {**decision, "status": "Rejected", "by": "person:sam"}
    [publish] = task_instances(drifted, "publish")
    assert publish.state == TaskInstanceState.SKIPPED
    assert current_version(data_root) == published_version(data_root) == approved
    record = json.loads((data_root / "registry" / "packaging" / "versions" / evaluation["version"]
                         / "version.json").read_text())
    assert record["status"] == "Rejected" and record["decided_by"] == "person:sam"
    assert "Rejected by person:sam" in outbox(data_root, "success")[-1]["body"]
