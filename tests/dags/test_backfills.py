"""Backfills with run parameters, through each door Airflow 3.3.2 offers, against the test metadata DB.

The REST API (`POST /api/v2/backfills`, Airflow's own FastAPI app in-process, as in test_trigger_form)
and the CLI (`airflow backfill create --dag-run-conf`) both store the conf on the backfill and give it
to every run they create, so the runs' tasks see it in their params. The UI's backfill dialog sends
its params form as `dag_run_conf` only when "Override parameters on existing runs" is ticked; left
unticked it sends `null`, which this file replays: the runs get no conf and run with the DAG's
defaults. A paused DAG's backfill runs stay queued until the DAG is unpaused: the scheduler starts
queued runs of unpaused DAGs only. No scheduler runs here: the runs are created, inspected and deleted.
"""
from __future__ import annotations

import json
import re

import pytest

from tests.dags.test_trigger_form import api, serialized_dags  # noqa: F401 (the in-process REST API, the DAGs in the DB)

DAG_ID = "pricing_optimization"
#: Three weekly intervals no other test runs: logical dates 2026-06-01, -08 and -15.
FROM, TO = "2026-06-01T00:00:00Z", "2026-06-15T00:00:00Z"
SMALL = {"dataset_rows": 12_000, "dataset_units": 200, "bucket_count": 20, "queue": "airbatch-cpu"}


@pytest.fixture
def clean_backfills(airflow_db):
    """No backfill of the DAG before or after the test (there can be one active backfill per DAG), and its
    pause state as it was."""
    from sqlalchemy import select

    from airflow.models.dag import DagModel
    from airflow.utils.session import create_session

    forget_backfills()
    with create_session() as session:
        was_paused = session.scalar(select(DagModel.is_paused).where(DagModel.dag_id == DAG_ID))
    yield
    forget_backfills()
    if was_paused is not None:
        set_paused(was_paused)


def forget_backfills() -> None:
    from sqlalchemy import delete, select

    from airflow.models.backfill import Backfill, BackfillDagRun
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    with create_session() as session:
        ids = list(session.scalars(select(Backfill.id).where(Backfill.dag_id == DAG_ID)))
        if not ids:
            return
        session.execute(delete(BackfillDagRun).where(BackfillDagRun.backfill_id.in_(ids)))
        for run in session.scalars(select(DagRun).where(DagRun.backfill_id.in_(ids))):
            session.delete(run)
        session.flush()
        session.execute(delete(Backfill).where(Backfill.id.in_(ids)))


def set_paused(paused: bool) -> None:
    from sqlalchemy import update

    from airflow.models.dag import DagModel
    from airflow.utils.session import create_session

    with create_session() as session:
        session.execute(update(DagModel).where(DagModel.dag_id == DAG_ID).values(is_paused=paused))


def backfill_runs(backfill_id: int) -> list[dict]:
    from sqlalchemy import select

    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    with create_session() as session:
        runs = session.scalars(select(DagRun).where(DagRun.backfill_id == backfill_id).order_by(DagRun.logical_date))
        return [{"run_id": r.run_id, "logical_date": r.logical_date, "conf": r.conf, "state": r.state,
                 "run_type": r.run_type} for r in runs]


def stored_conf(backfill_id: int):
    from airflow.models.backfill import Backfill
    from airflow.utils.session import create_session

    with create_session() as session:
        return session.get(Backfill, backfill_id).dag_run_conf


def task_params(conf) -> dict:
    """The params a task of the run sees: what the task runner builds from the DAG's params and the run's conf."""
    from airflow.sdk.definitions.param import process_params

    from tests.system.test_batch_smoke import load_dag

    dag = load_dag(DAG_ID)
    return process_params(dag, dag.get_task("dataset"), conf, suppress_exception=False)


def post_backfill(api, dag_run_conf) -> dict:  # noqa: F811
    response = api.post("/api/v2/backfills", json={"dag_id": DAG_ID, "from_date": FROM, "to_date": TO,
                                                   "dag_run_conf": dag_run_conf, "max_active_runs": 1})
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.slow  # a backfill's runs: seconds of CPU
def test_the_rest_api_gives_the_backfills_conf_to_every_run_and_so_to_its_params(api, clean_backfills):  # noqa: F811
    backfill = post_backfill(api, SMALL)
    assert backfill["dag_run_conf"] == SMALL and stored_conf(backfill["id"]) == SMALL
    runs = backfill_runs(backfill["id"])
    assert [r["logical_date"].date().isoformat() for r in runs] == ["2026-06-01", "2026-06-08", "2026-06-15"]
    assert {r["run_type"] for r in runs} == {"backfill"} and all(r["conf"] == SMALL for r in runs)
    params = task_params(runs[0]["conf"])
    assert {k: params[k] for k in SMALL} == SMALL


@pytest.mark.slow  # a backfill's runs: seconds of CPU
def test_the_ui_dialog_without_override_sends_null_and_the_runs_get_the_dags_defaults(api, clean_backfills):  # noqa: F811
    """The request Airflow 3.3.2's backfill dialog sends when "Override parameters on existing runs" is not ticked
    (its default), whatever the params form holds: `dag_run_conf: null`."""
    backfill = post_backfill(api, None)
    assert backfill["dag_run_conf"] is None and stored_conf(backfill["id"]) is None
    runs = backfill_runs(backfill["id"])
    assert len(runs) == 3 and all(r["conf"] == {} for r in runs)
    assert task_params(runs[0]["conf"])["dataset_rows"] == 4_200_000  # the full-size default


def test_the_ui_bundle_sends_the_form_only_when_override_is_ticked():
    """Pins the finding above to the installed UI: the dialog's submit sends `dag_run_conf: <box> ?
    JSON.parse(conf) : null`, the box being "Override parameters on existing runs", unticked at first."""
    from pathlib import Path

    import airflow

    bundles = list((Path(airflow.__file__).parent / "ui" / "dist" / "assets").glob("index-*.js"))
    text = "".join(path.read_text(errors="replace") for path in bundles)
    if "overrideExistingParams" not in text:
        pytest.skip("this Airflow's UI has no 'Override parameters on existing runs' box: re-check docs/pricing.md")
    assert re.search(r"dag_run_conf:(\w+)\?JSON\.parse\(\w+\.conf\):null", text), \
        "the backfill dialog's submit changed: re-check the Backfills section of docs/pricing.md"


def test_the_cli_gives_dag_run_conf_to_every_run(serialized_dags, clean_backfills):  # noqa: F811
    from sqlalchemy import select

    from airflow.cli import cli_parser
    from airflow.models.backfill import Backfill
    from airflow.utils.session import create_session

    args = cli_parser.get_parser().parse_args([
        "backfill", "create", "--dag-id", DAG_ID, "--from-date", FROM[:10], "--to-date", TO[:10],
        "--max-active-runs", "1", "--dag-run-conf", json.dumps(SMALL)])
    args.func(args)
    with create_session() as session:
        [backfill_id] = session.scalars(select(Backfill.id).where(Backfill.dag_id == DAG_ID))
    assert stored_conf(backfill_id) == SMALL
    runs = backfill_runs(backfill_id)
    assert len(runs) == 3 and all(r["conf"] == SMALL for r in runs)


@pytest.mark.slow
def test_a_paused_dags_backfill_runs_stay_queued_until_it_is_unpaused(api, clean_backfills, monkeypatch):  # noqa: F811
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    set_paused(True)
    backfill = post_backfill(api, SMALL)
    assert api.get(f"/api/v2/dags/{DAG_ID}").json()["is_paused"] is True  # creating the backfill left it paused
    ours = {r["run_id"] for r in backfill_runs(backfill["id"])}
    assert {r["state"] for r in backfill_runs(backfill["id"])} == {"queued"}
    monkeypatch.setattr(DagRun, "DEFAULT_DAGRUNS_TO_EXAMINE", 10_000)  # other tests' queued runs do not hide ours

    def startable() -> set[str]:
        """The runs the scheduler would move from queued to running now (it honours max_active_runs=1)."""
        with create_session() as session:
            return {r.run_id for r in DagRun.get_queued_dag_runs_to_set_running(session)} & ours

    assert startable() == set()
    set_paused(False)
    assert startable() == ours
