"""The pricing pipeline end to end through dag.test(): windows, fan-out, evaluation, approval, publish, notify."""
from __future__ import annotations

import datetime as dt
import json
import threading
import time
from pathlib import Path

import pandas as pd
import pendulum
import pytest

from airflow.utils.state import DagRunState, TaskInstanceState

from operators.kit.prep import read_manifest

from tests.system.test_batch_smoke import load_dag
from tests.system.test_units_of_work import task_instances, xcom

pytestmark = pytest.mark.system

#: 200 units over 60 days from 2026-01-05: windows of 28 days end on the Mondays below.
SMALL = {"dataset_rows": 12_000, "dataset_units": 200, "dataset_start_date": "2026-01-05", "dataset_seed": 3,
         "bucket_count": 20, "rows_per_batch": 0, "queue": "airbatch-cpu"}
LOOSE_REJECT = {"reject_mape_p50": 10, "reject_coverage": 0, "reject_degenerate_share": 1,
                "reject_mape_p50_increase": 10, "reject_dead_letter_share": 1}
ALWAYS_APPROVE = {"approve_mape_p50": 10, "approve_coverage": 0, "approve_degenerate_share": 1,
                  "approve_mape_p50_increase": 10, "approve_input_shift": 100, "approve_dead_letter_share": 1,
                  **LOOSE_REJECT}
MONDAY = pendulum.datetime(2026, 2, 16, tz="UTC")


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch):
    monkeypatch.setenv("SHARD_RETRY_DELAY_S", "1")


def run_pricing(conf, logical_date=MONDAY):
    return load_dag("pricing_optimization").test(run_conf={**SMALL, **conf}, logical_date=logical_date)


def registry_versions(data_root: Path) -> list[dict]:
    folder = data_root / "registry" / "pricing" / "versions"
    return sorted((json.loads(p.read_text()) for p in folder.glob("*/version.json")), key=lambda r: r["created_at"])


def current_version(data_root: Path) -> str | None:
    pointer = data_root / "registry" / "pricing" / "current.json"
    return json.loads(pointer.read_text())["version"] if pointer.exists() else None


def outbox(data_root: Path, kind: str) -> list[dict]:
    messages = [json.loads(p.read_text()) for p in sorted((data_root / "outbox").glob("*.json"))]
    return [m for m in messages if m["kind"] == kind]


@pytest.mark.parametrize("conf, message", [
    ({"bucket_count": 0}, "bucket_count"),
    ({"queue": "airbatch-tpu"}, "queue"),
    ({"max_change": 1.5}, "max_change"),
    ({"approve_mape_p50": "low"}, "approve_mape_p50"),
    ({"dataset_start_date": "05/01/2026"}, "dataset_start_date"),
    ({"lookback_days": 3}, "lookback_days"),
])
def test_bad_parameters_are_refused_by_the_form_schema(airflow_db, conf, message):
    from airflow.sdk.definitions.param import ParamsDict

    dag = load_dag("pricing_optimization")
    from airflow.sdk.exceptions import ParamValidationError

    params = ParamsDict(dag.params)
    with pytest.raises(ParamValidationError) as err:
        for key, value in conf.items():
            params[key] = value  # what the trigger form and the REST API do with a run's conf
        params.validate()
    assert message in str(err.value)
    # and a run triggered with it is refused before any task runs
    with pytest.raises(ParamValidationError):
        dag.test(run_conf=conf)


def test_auto_approve_publishes_and_notifies_then_an_identical_run_is_entirely_cached(airflow_db, local_aws,
                                                                                       data_root):
    run = run_pricing(ALWAYS_APPROVE)
    assert run.state == DagRunState.SUCCESS
    [prepared] = xcom(run, "prepare")
    assert prepared["window"] == ["2026-01-19", "2026-02-16"]
    assert prepared["rows_quarantined"] > 0 and sum(prepared["quarantined_by_reason"].values()) == prepared["rows_quarantined"]
    [summary] = xcom(run, "notify")
    assert summary["fanout"]["succeeded"] == summary["fanout"]["batches"] == 20
    assert summary["decision"]["status"] == "Approved" and summary["decision"]["by"] == "thresholds"
    [version] = registry_versions(data_root)
    assert version["status"] == "Approved" and current_version(data_root) == version["version"]
    assert version["lineage"]["window"] == ["2026-01-19", "2026-02-16"]
    published = pd.read_parquet(data_root / "published" / "pricing" / "current" / "prices.parquet")
    assert len(published) == version["metrics"]["units_scored"] > 0
    report = (data_root / "registry" / "pricing" / "versions" / version["version"] / "report.html").read_text()
    assert report.count("data:image/png;base64,") == 3 and "Approved" not in report  # the report shows the proposal
    [message] = outbox(data_root, "success")
    assert "Approved by thresholds" in message["body"] and f"version {version['version']}" in message["subject"]
    assert f"{summary['fanout']['units']} units" in message["subject"] and "report.html" in message["body"]

    again = run_pricing(ALWAYS_APPROVE)
    assert again.state == DagRunState.SUCCESS
    [second] = xcom(again, "notify")
    assert second["fanout"]["cached"] == 20 and second["fanout"]["succeeded"] == 0
    [reprepared] = xcom(again, "prepare")  # the same input and settings: the first run's prep, copied
    assert reprepared["run_root"] != prepared["run_root"]
    counts = ("rows_in", "rows_ok", "rows_quarantined", "quarantined_by_reason", "units", "batches")
    assert {k: reprepared[k] for k in counts} == {k: prepared[k] for k in counts}
    assert read_manifest(reprepared["manifest_uri"])["uri"].str.startswith(reprepared["run_root"]).all()
    assert len(registry_versions(data_root)) == 2  # the re-run is a new version; the decided one stays final


def test_reject_path_keeps_the_current_version_and_publishes_nothing(airflow_db, local_aws, data_root):
    first = run_pricing(ALWAYS_APPROVE)
    assert first.state == DagRunState.SUCCESS
    approved = current_version(data_root)
    run = run_pricing({"reject_mape_p50": 0.0001}, logical_date=MONDAY.add(weeks=1))
    assert run.state == DagRunState.SUCCESS
    [evaluation] = xcom(run, "evaluate")
    assert evaluation["proposal"] == "reject" and "mape_p50" in evaluation["reasons"][0]
    [publish] = task_instances(run, "publish")
    assert publish.state == TaskInstanceState.SKIPPED
    assert current_version(data_root) == approved
    assert registry_versions(data_root)[-1]["status"] == "Rejected"
    assert "Rejected by thresholds" in outbox(data_root, "success")[-1]["body"]


def respond_when_asked(dag_id: str, option: str, user: str, answered: list, pages: list | None = None
                       ) -> threading.Thread:
    """A reviewer: waits for the approval task to park, reads its page, then answers through the REST API's handler."""

    def reviewer():
        from sqlalchemy import select

        from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser
        from airflow.api_fastapi.core_api.datamodels.hitl import UpdateHITLDetailPayload
        from airflow.api_fastapi.core_api.routes.public.hitl import update_hitl_detail
        from airflow.models.hitl import HITLDetail
        from airflow.models.taskinstance import TaskInstance
        from airflow.utils.session import create_session

        deadline = time.time() + 240
        while time.time() < deadline:
            with create_session() as session:
                ti = session.scalars(select(TaskInstance).where(
                    TaskInstance.dag_id == dag_id, TaskInstance.task_id == "ask_reviewer",
                    TaskInstance.state == TaskInstanceState.AWAITING_INPUT)).first()
                if ti is not None:
                    if pages is not None:
                        detail = session.scalars(select(HITLDetail).where(HITLDetail.ti_id == ti.id)).one()
                        pages.append({"subject": detail.subject, "body": detail.body})
                    update_hitl_detail(dag_id=dag_id, dag_run_id=ti.run_id, task_id="ask_reviewer",
                                       update_hitl_detail_payload=UpdateHITLDetailPayload(chosen_options=[option]),
                                       user=SimpleAuthManagerUser(username=user, role="admin"), session=session)
                    answered.append(ti.run_id)
                    return
            time.sleep(0.5)

    thread = threading.Thread(target=reviewer, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("option, status", [("Approve", "Approved"), ("Reject", "Rejected")])
def test_between_the_limits_a_person_decides(airflow_db, local_aws, data_root, option, status):
    answered: list[str] = []
    pages: list[dict] = []
    reviewer = respond_when_asked("pricing_optimization", option, "pat", answered, pages)
    run = run_pricing({**LOOSE_REJECT, "review": "always"})
    reviewer.join(timeout=5)
    assert answered == [run.run_id]
    assert run.state == DagRunState.SUCCESS
    [evaluation] = xcom(run, "evaluate")
    assert evaluation["proposal"] == "review"
    # the page: the proposal, its reasons, the evaluator's summary lines and the report under DATA_ROOT
    [page] = pages
    assert page["subject"] == f"Approve pricing version {evaluation['version']}?"
    assert "Proposed: **review**" in page["body"] and "review: always (run parameter)" in page["body"]
    assert all(line in page["body"] for line in evaluation["lines"]) and evaluation["lines"]
    assert f"Report: DATA_ROOT/registry/pricing/versions/{evaluation['version']}/report.html" in page["body"]
    assert str(data_root) not in page["body"]
    [decision] = xcom(run, "decide")
    assert decision == {**decision, "status": status, "by": "person:pat"}
    [version] = registry_versions(data_root)
    assert version["status"] == status and version["decided_by"] == "person:pat"
    [publish] = task_instances(run, "publish")
    assert publish.state == (TaskInstanceState.SUCCESS if status == "Approved" else TaskInstanceState.SKIPPED)
    assert current_version(data_root) == (version["version"] if status == "Approved" else None)


def test_three_weekly_intervals_give_three_versions_from_three_windows(airflow_db, local_aws, data_root):
    ends = [MONDAY, MONDAY.add(weeks=1), MONDAY.add(weeks=2)]
    for end in ends:
        run = run_pricing(ALWAYS_APPROVE, logical_date=end)
        assert run.state == DagRunState.SUCCESS
        [interval_end] = [run.data_interval_end]
        assert interval_end == end
    versions = registry_versions(data_root)
    assert len(versions) == 3
    windows = [v["lineage"]["window"] for v in versions]
    assert windows == [[(e - dt.timedelta(days=28)).date().isoformat(), e.date().isoformat()] for e in ends]
    assert len({v["input_stats"]["last_date"] for v in versions}) == 3
    assert current_version(data_root) == versions[-1]["version"]
    # the later windows overlap the earlier ones but hold other rows: every batch key is new
    assert all(v["metrics"]["units_scored"] > 0 for v in versions)


def test_a_failing_task_notifies_its_first_error(airflow_db, local_aws, data_root):
    bad = data_root / "bad" / "date=2026-02-01"
    bad.mkdir(parents=True)
    (bad / "part-0.csv").write_text("segment,location,product,date,price,quantity,unit_cost\n"
                                    "s1,l1,p1,2026-02-01,9.5,3,4\n")
    run = run_pricing({"input_uri": str(data_root / "bad")})
    assert run.state == DagRunState.FAILED
    [message] = outbox(data_root, "failure")
    assert message["subject"] == "[pricing_optimization] FAILED at prepare"
    assert "missing column(s): 'current_price'" in message["body"]
    assert {ti.state for ti in task_instances(run, "run_shard")} <= {TaskInstanceState.UPSTREAM_FAILED}


def test_a_csv_quote_that_never_closes_cannot_hide_the_last_days_of_the_window(airflow_db, local_aws, data_root):
    """One CSV file in date order; a line 4 days before the window ends opens a quote that never closes. The
    reader took every later line into that one line: the run was approved and published without its last 4
    days. Now that line alone is quarantined and every line after it is read."""
    from operators.pipelines.pricing import pricing_data

    parts = data_root / "parts"
    pricing_data.generate(parts, rows=SMALL["dataset_rows"], units=SMALL["dataset_units"],
                          start_date=SMALL["dataset_start_date"], seed=SMALL["dataset_seed"], fmt="csv")
    files = sorted(parts.glob("date=*/*.csv"))
    header = files[0].read_text().split("\n", 1)[0].replace('"', "")
    lines = [line.replace('"', "") for path in files for line in path.read_text().splitlines()[1:]]
    columns = header.split(",")
    broken = next(i for i, line in enumerate(lines) if line.split(",")[columns.index("date")] == "2026-02-12")
    fields = lines[broken].split(",")
    fields[columns.index("price")] = '"' + fields[columns.index("price")]  # no quote after it closes it
    lines[broken] = ",".join(fields)
    (data_root / "sales.csv").write_text("\n".join([header, *lines]) + "\n")

    run = run_pricing({**ALWAYS_APPROVE, "input_uri": str(data_root / "sales.csv")})
    [prepared] = xcom(run, "prepare")
    assert prepared["window"] == ["2026-01-19", "2026-02-16"]
    in_window = sum("2026-01-19" <= line.split(",")[columns.index("date")] < "2026-02-16" for line in lines)
    assert prepared["rows_in"] == in_window == prepared["rows_ok"] + prepared["rows_quarantined"]
    assert prepared["quarantined_by_reason"]["malformed:unclosed_quote"] == 1
    assert sum(prepared["quarantined_by_reason"].values()) == prepared["rows_quarantined"]
    assert run.state == DagRunState.SUCCESS
    [version] = registry_versions(data_root)
    assert version["input_stats"]["last_date"] == "2026-02-15"  # the window's last day is in the model

def test_the_default_synthetic_dataset_ends_where_the_run_interval_ends(airflow_db, local_aws, data_root):
    late_monday = pendulum.datetime(2026, 11, 16, tz="UTC")  # a scheduled run's week, far from SMALL's dates
    conf = {"dataset_start_date": None, **ALWAYS_APPROVE}
    run = run_pricing(conf, logical_date=late_monday)
    assert run.state == DagRunState.SUCCESS
    [prepared] = xcom(run, "prepare")
    assert prepared["window"] == ["2026-10-19", "2026-11-16"] and prepared["rows_ok"] > 5000
    assert prepared["input_stats"]["last_date"] == "2026-11-15"


def test_a_run_without_a_logical_date_reads_the_week_its_run_after_ends(airflow_db, local_aws, data_root):
    """What `POST /api/v2/dags/{dag_id}/dagRuns` creates for `"logical_date": null` (the official client's
    default): a run with no logical date and no data interval, whose tasks' context has no data_interval_end,
    logical_date, ds or ts. It covers the last complete week before its run_after, as a manual run would."""
    wednesday = MONDAY.add(days=2, hours=9, minutes=30)
    run = load_dag("pricing_optimization").test(run_conf={**SMALL, **ALWAYS_APPROVE, "dataset_start_date": None},
                                                logical_date=None, run_after=wednesday)
    assert run.logical_date is None and run.data_interval_end is None and run.run_after == wednesday
    assert run.state == DagRunState.SUCCESS
    [prepared] = xcom(run, "prepare")
    assert prepared["window"] == ["2026-01-19", "2026-02-16"] and prepared["rows_ok"] > 0
    # the synthetic data ends where the inferred interval ends, as for a scheduled run of that week
    assert prepared["input_stats"]["last_date"] == "2026-02-15"
    [version] = registry_versions(data_root)
    assert version["version"].startswith("2026-02-16T00") and version["status"] == "Approved"
    assert version["lineage"]["window"] == ["2026-01-19", "2026-02-16"] and version["lineage"]["logical_date"] is None
    assert current_version(data_root) == version["version"]
