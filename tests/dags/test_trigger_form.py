"""Every DAG's trigger form submits with its defaults, through the REST API the UI itself calls.

The form is built from `GET /api/v2/dags/{dag_id}/details` (each param's value and JSON Schema) and
posted to `POST /api/v2/dags/{dag_id}/dagRuns`, as the UI does: a param whose schema does not allow
null is required there, and an empty or null value keeps the Trigger button disabled. The app is
Airflow's own FastAPI app in-process, against the test metadata DB, with the simple auth manager.
"""
from __future__ import annotations

import secrets
from pathlib import Path

import pendulum
import pytest

REPO = Path(__file__).resolve().parents[2]
DAG_IDS = sorted(p.stem for p in (REPO / "dags").glob("*.py"))


@pytest.fixture(scope="module")
def serialized_dags(airflow_db):
    """The project's DAGs in the test metadata DB, as the dag-processor writes them (whatever ran before)."""
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.dagbag import BundleDagBag, sync_bag_to_db

    DagBundlesManager().sync_bundles_to_db()
    bag = BundleDagBag(dag_folder=str(REPO / "dags"), bundle_path=REPO / "dags", bundle_name="dags-folder")
    assert not bag.import_errors, bag.import_errors
    sync_bag_to_db(bag, "dags-folder", None)


@pytest.fixture(scope="module")
def api(serialized_dags):
    from fastapi.testclient import TestClient

    from airflow.api_fastapi.app import create_app, purge_cached_app
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    patch = pytest.MonkeyPatch()
    patch.setenv("AIRFLOW__CORE__AUTH_MANAGER",
                 "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager")
    patch.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS", "True")
    patch.setenv("AIRFLOW__API_AUTH__JWT_SECRET", secrets.token_urlsafe(64))  # this test's tokens only
    purge_cached_app()
    app = create_app("core")
    token = app.state.auth_manager.generate_jwt(SimpleAuthManagerUser(username="form", role="admin"))
    with TestClient(app, headers={"Authorization": f"Bearer {token}"}) as client:
        yield client
    purge_cached_app()
    patch.undo()


def form_defaults(api, dag_id: str) -> tuple[dict, list[str]]:
    """The conf the trigger form submits untouched, and the params it would call required but missing."""
    response = api.get(f"/api/v2/dags/{dag_id}/details")
    assert response.status_code == 200, response.text
    conf, missing = {}, []
    for name, spec in response.json()["params"].items():
        types = spec["schema"].get("type")
        required = bool(types) and not (isinstance(types, list) and "null" in types)  # the UI's own rule
        value = spec["value"]
        if required and value in (None, ""):
            missing.append(name)
        conf[name] = value
    return conf, missing


def trigger(api, dag_id: str, conf: dict):
    return api.post(f"/api/v2/dags/{dag_id}/dagRuns",
                    json={"logical_date": pendulum.now("UTC").isoformat(), "conf": conf})


def forget(api, dag_id: str, response) -> None:
    """Delete a run the test created: no scheduler runs it, and later tests share the DB."""
    assert api.delete(f"/api/v2/dags/{dag_id}/dagRuns/{response.json()['dag_run_id']}").status_code == 204


@pytest.mark.parametrize("dag_id", DAG_IDS)
def test_the_form_with_its_defaults_is_accepted(api, dag_id):
    conf, missing = form_defaults(api, dag_id)
    assert missing == [], f"{dag_id}: the form keeps Trigger disabled until {missing} are filled in"
    details = api.get(f"/api/v2/dags/{dag_id}/details").json()["params"]
    assert [name for name, spec in details.items() if not spec["description"]] == []
    response = trigger(api, dag_id, conf)
    assert response.status_code == 200, response.text
    assert response.json()["conf"] == conf and response.json()["state"] == "queued"
    forget(api, dag_id, response)


@pytest.mark.parametrize("dag_id, name, value", [
    ("units_of_work", "bucket_count", 0), ("units_of_work", "bucket_count", 10_001),
    ("pricing_optimization", "max_change", 1.5), ("pricing_optimization", "approve_mape_p50", "low"),
    ("pricing_optimization", "dataset_start_date", "05/01/2026"), ("gpu_batch_benchmark", "repeats", 0),
])
def test_a_value_outside_its_range_is_refused_by_the_api_not_clamped(api, dag_id, name, value):
    conf, _ = form_defaults(api, dag_id)
    response = trigger(api, dag_id, {**conf, name: value})
    assert response.status_code == 400, response.text
    assert f"Invalid input for param {name}" in response.json()["detail"]


@pytest.mark.slow  # a dag.test() run: seconds of CPU
def test_contradictory_workload_parameters_are_accepted_by_airflow_and_refused_by_the_first_task(
        api, data_root):
    """Airflow 3.3 checks each param against its own JSON Schema only (no DAG-level hook runs when a run is
    created), so the REST API accepts min_price_ratio > max_price_ratio; the DAG's first task refuses it,
    naming both fields, before any data is generated or any Batch job is submitted."""
    from airflow.utils.state import DagRunState, TaskInstanceState

    from tests.system.test_batch_smoke import load_dag

    conf, _ = form_defaults(api, "pricing_optimization")
    contradictory = {**conf, "min_price_ratio": 1.5, "max_price_ratio": 1.3}
    accepted = trigger(api, "pricing_optimization", contradictory)
    assert accepted.status_code == 200, accepted.text
    forget(api, "pricing_optimization", accepted)

    run = load_dag("pricing_optimization").test(run_conf=contradictory)
    assert run.state == DagRunState.FAILED
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert states["dataset"] == TaskInstanceState.FAILED
    assert states["prepare"] == states["run_shard"] == TaskInstanceState.UPSTREAM_FAILED
    [message] = [p.read_text() for p in (data_root / "outbox").glob("*-failure.json")]
    assert "FAILED at dataset" in message
    assert "min_price_ratio (1.5) is above max_price_ratio (1.3)" in message
    assert not (data_root / "datasets").exists()  # refused before the synthetic dataset was generated


@pytest.mark.slow  # a dag.test() run: seconds of CPU
def test_an_unknown_param_is_refused_by_the_first_task_naming_it(api, data_root, capfd):
    conf, _ = form_defaults(api, "units_of_work")
    response = trigger(api, "units_of_work", {**conf, "max_chnage": 0.2})
    assert response.status_code == 200, response.text  # Airflow keeps unknown conf keys
    forget(api, "units_of_work", response)

    from airflow.utils.state import DagRunState

    from tests.system.test_batch_smoke import load_dag

    run = load_dag("units_of_work").test(run_conf={"max_chnage": 0.2})
    assert run.state == DagRunState.FAILED
    [dataset] = [ti for ti in run.get_task_instances() if ti.task_id == "dataset"]
    assert dataset.state == "failed"
    assert "unknown run param(s) ['max_chnage']; known: [" in capfd.readouterr().out
    assert not list((data_root / "runs").rglob("input/*"))  # nothing generated


@pytest.mark.parametrize("dag_id, name", [
    ("units_of_work", "budget"), ("units_of_work", "sleep_s"), ("batch_smoke", "sleep_s"),
    ("training_sweep", "runnable_timeout_s"), ("packaging_training", "l2"), ("pricing_optimization", "approve_mape_p50"),
])
@pytest.mark.parametrize("spelled", ["NaN", "Infinity"])
def test_nan_or_infinity_in_a_trigger_is_refused_by_the_api_naming_the_param(api, dag_id, name, spelled):
    """Python's JSON (the REST API's, the CLI's) reads NaN and Infinity as numbers; Airflow would store them and
    hand the task null (a nullable param then silently means "none"). Every number param's schema refuses them."""
    import json

    conf, _ = form_defaults(api, dag_id)
    body = json.dumps({"logical_date": pendulum.now("UTC").isoformat(), "conf": {**conf, name: float(spelled.lower()
                                                                                                     .replace("infinity", "inf"))}})
    assert f'"{name}": {spelled}' in body
    response = api.post(f"/api/v2/dags/{dag_id}/dagRuns", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 400, response.text
    detail = response.json()["detail"]
    assert detail.startswith(f"Invalid input for param {name}: "), detail
    assert ("NaN, Infinity and -Infinity are not numbers: give a finite number" in detail
            or (spelled == "Infinity" and "is greater than the maximum" in detail)), detail


@pytest.mark.slow  # a dag.test() run each: seconds of CPU
@pytest.mark.parametrize("dag_id, conf, words", [
    ("batch_smoke", {"repeats": 2}, "unknown run param(s) ['repeats']; known: ['children', 'fail_index', 'queue', "
                                    "'shards', 'sleep_s']"),
    ("gpu_batch_benchmark", {"repeat": 5}, "unknown run param(s) ['repeat'] (did you mean 'repeats' for 'repeat'?); "
                                           "known: ['cases', 'repeats', 'small']"),
    ("batch_smoke", {"children": 5, "fail_index": 5}, "fail_index 5 is not an index of a shard of children=5 (0..4)"),
    ("gpu_batch_benchmark", {"cases": ["matmul_f32_n1000", "matmul_f32_n1000"]},
     "case id(s) ['matmul_f32_n1000'] listed more than once"),
    ("training_sweep", {"sweep": {"grid": {"l2": [1.0]}}, "leaderbord_size": 3},
     "(did you mean 'leaderboard_size' for 'leaderbord_size'?)"),
])
def test_a_dag_beyond_the_house_pipelines_refuses_unknown_keys_and_impossible_values_before_any_job(
        api, data_root, capfd, dag_id, conf, words):
    """Airflow keeps unknown conf keys and checks each param alone; the DAG's first task refuses, naming the key and
    the accepted ones, before any Batch job is submitted."""
    from airflow.utils.state import DagRunState, TaskInstanceState

    from tests.system.test_batch_smoke import load_dag

    run = load_dag(dag_id).test(run_conf=conf)
    assert run.state == DagRunState.FAILED
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    first = "prepare" if dag_id == "training_sweep" else "plan"
    assert states[first] == TaskInstanceState.FAILED
    assert all(state == TaskInstanceState.UPSTREAM_FAILED for task, state in states.items() if task != first)
    assert words in capfd.readouterr().out
    assert not (data_root / "outputs").exists()  # nothing written for a job, and no job
