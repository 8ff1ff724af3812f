"""docs/new-pipeline.md, executed: its files become a package of their own, installed and run end to end.

The package is built from the page's code blocks marked `file=...`, installed into this Python
environment (as the page says: Airflow and the local endpoint's jobs both find it there) and removed
afterwards. Its DAG runs through dag.test() against the local endpoint; nothing in the project is
edited.
"""
from __future__ import annotations

import datetime as dt
import importlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from airflow.utils.state import DagRunState
from localaws.stack import REPO, local_bundle
from tests.system.test_units_of_work import task_instances, xcom

pytestmark = pytest.mark.system

DOC = REPO / "docs" / "new-pipeline.md"
BLOCK = re.compile(r"^```(?P<lang>\w+) file=(?P<path>\S+)\n(?P<body>.*?)^```$", re.M | re.S)
DISTRIBUTION = "store-forecast"


def doc_files() -> dict[str, str]:
    files = {m["path"]: m["body"] for m in BLOCK.finditer(DOC.read_text())}
    assert {"pyproject.toml", "store_forecast/workload.py", "store_forecast/evaluation.py",
            "dags/store_forecast.py", "dags/store_forecast_daily.py"} <= set(files), sorted(files)
    return files


def project_state() -> str:
    return subprocess.run(["git", "status", "--porcelain", "--untracked-files=all", "--", "dags", "operators",
                           "images", "config", "localaws"], cwd=REPO, capture_output=True, text=True).stdout


def pip(*args: str) -> None:
    done = subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", *args],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.fixture
def doc_package(tmp_path):
    """The page's package, built in a temporary folder and installed; uninstalled afterwards."""
    package = tmp_path / DISTRIBUTION
    for name, body in doc_files().items():
        (package / name).parent.mkdir(parents=True, exist_ok=True)
        (package / name).write_text(body)
    pip("install", "--no-deps", "--no-build-isolation", "--no-index", str(package))
    importlib.invalidate_caches()
    try:
        yield package
    finally:
        pip("uninstall", "-y", DISTRIBUTION)
        for module in [m for m in sys.modules if m == "store_forecast" or m.startswith("store_forecast.")]:
            del sys.modules[module]
        importlib.invalidate_caches()


def daily_sales(path: Path, stores: int = 4, items: int = 10, days: int = 35) -> Path:
    rng = np.random.default_rng(7)
    start = dt.date(2026, 1, 5)
    frame = pd.DataFrame([
        {"store": f"S{s}", "item": f"I{i:02d}", "day": (start + dt.timedelta(days=d)).isoformat(),
         "sales": round(float(max(0.0, 20 + 3 * i + rng.normal(0, 2))), 2)}
        for s in range(stores) for i in range(items) for d in range(days)])
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)
    return path


def test_the_pages_pipeline_installs_tries_and_runs_end_to_end_with_no_edit_to_the_project(
        airflow_db, local_aws, data_root, doc_package, monkeypatch):
    from airflow.dag_processing.dagbag import DagBag

    # the package's dags/ folder as a DAG bundle of its own: the project's dags/ stays as it is
    bundles = json.loads(os.environ["AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST"])
    monkeypatch.setenv("AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST",
                       json.dumps([*bundles, local_bundle("store-forecast-dags", doc_package / "dags")]))
    before = project_state()
    sales = daily_sales(data_root / "in" / "sales.csv")

    # the try loop the page shows, through the installed console script
    tried = subprocess.run([str(Path(sys.executable).parent / "batch-worker"), "try", "store_forecast", str(sales),
                            "--params", '{"alpha": 0.5}'], capture_output=True, text=True, timeout=300)
    assert tried.returncode == 0, tried.stdout + tried.stderr
    assert "forecast" in tried.stdout
    assert "combines batches: checked: 40 units in two calls give the rows they get in one" in tried.stdout

    bag = DagBag(dag_folder=str(doc_package / "dags" / "store_forecast.py"))
    assert not bag.import_errors, bag.import_errors
    dag = bag.dags["store_forecast"]
    for name in ("alpha", "holdout_days", "min_days", "approve_coverage", "reject_mae_p50", "input_uri"):
        assert dag.params.get_param(name).description, name

    run = dag.test(run_conf={"input_uri": str(sales)}, logical_date=dt.datetime(2026, 2, 16, tzinfo=dt.timezone.utc))
    assert run.state == DagRunState.SUCCESS
    [fanout] = xcom(run, "collect")
    assert fanout["units"] == 40 and fanout["failed"] == 0 and fanout["succeeded"] == fanout["batches"] > 1
    [evaluation] = xcom(run, "evaluate")
    assert evaluation["metrics"]["coverage"] == 1.0 and evaluation["proposal"] == "approve", evaluation
    [decision] = xcom(run, "decide")
    assert decision["status"] == "Approved"
    published = data_root / "published" / "store_forecast" / "current"
    outputs = pd.read_parquet(next(published.glob("*.parquet")))
    assert len(outputs) == 40 and outputs["forecast"].notna().all()
    assert list(outputs.columns) == ["store", "item", "days", "forecast", "abs_error"]
    assert list((data_root / "outbox").glob("*.json"))

    # the page's section 7: the same input and parameters again is entirely cached
    again = dag.test(run_conf={"input_uri": str(sales)}, logical_date=dt.datetime(2026, 2, 23, tzinfo=dt.timezone.utc))
    assert again.state == DagRunState.SUCCESS
    [cached] = xcom(again, "collect")
    assert cached["cached"] == fanout["batches"] and cached["succeeded"] == 0 and cached["job_ids"] == []
    [shard] = task_instances(again, "run_shard")
    assert shard.state == "success"

    # a contradictory combination is refused before any Batch job, naming both fields
    refused = dag.test(run_conf={"input_uri": str(sales), "min_days": 5, "holdout_days": 7},
                       logical_date=dt.datetime(2026, 3, 2, tzinfo=dt.timezone.utc))
    assert refused.state == DagRunState.FAILED
    assert not task_instances(refused, "run_shard") or all(
        ti.state != "success" for ti in task_instances(refused, "run_shard"))

    # the page's section 8: the daily DAG, one run at a time, its window on the time column, its input by default
    daily_bag = DagBag(dag_folder=str(doc_package / "dags" / "store_forecast_daily.py"))
    assert not daily_bag.import_errors, daily_bag.import_errors
    daily = daily_bag.dags["store_forecast_daily"]
    assert daily.max_active_runs == 1 and type(daily.timetable).__name__ == "CronDataIntervalTimetable"
    assert "DATA_ROOT/in/sales.csv" in daily.params.get_param("input_uri").description
    assert daily.params["lookback_days"] == 21

    def day(date: dt.datetime) -> dict:
        # a run triggered at midnight of `date`, as the schedule runs it: the day before; no conf: the nightly export
        done = daily.test(logical_date=date)
        assert done.state == DagRunState.SUCCESS
        [prepared] = xcom(done, "prepare")
        [evaluation] = xcom(done, "evaluate")
        [decision] = xcom(done, "decide")
        assert decision["status"] == "Approved", evaluation
        return {"window": prepared["window"], "evaluation": evaluation, "decision": decision}

    first = day(dt.datetime(2026, 2, 2, tzinfo=dt.timezone.utc))
    assert first["window"] == ["2026-01-12", "2026-02-02"]
    assert first["evaluation"]["comparison"] == {"previous_version": None}
    from operators.kit.registry import Registry

    daily_versions = Registry(str(data_root), "store_forecast_daily")
    outputs = pd.read_parquet(Path(daily_versions.version_dir(first["evaluation"]["version"])) / "outputs.parquet")
    assert len(outputs) == 40 and (outputs["days"] == 21).all()  # the window's 21 days of every unit
    # the next day is compared with the day before it (section 4's previous)
    second = day(dt.datetime(2026, 2, 3, tzinfo=dt.timezone.utc))
    assert second["evaluation"]["comparison"]["previous_version"] == first["evaluation"]["version"]
    assert second["evaluation"]["comparison"]["mae_p50_increase"] is not None
    # a backfilled older day: compared with nothing (no approved day ends by its start), the newest day stays current
    backfill = day(dt.datetime(2026, 2, 1, tzinfo=dt.timezone.utc))
    assert backfill["evaluation"]["comparison"] == {"previous_version": None}
    assert backfill["decision"]["not_current"]["current"] == second["evaluation"]["version"]
    assert daily_versions.current()["version"] == second["evaluation"]["version"]
    # the weekly DAG's registry is its own
    assert Registry(str(data_root), "store_forecast").current()["version"] != second["evaluation"]["version"]

    assert project_state() == before, "running the page's pipeline changed files of the project"
