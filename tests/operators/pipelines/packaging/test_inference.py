"""Packaging inference's stages without Airflow running: the approved model, daily windows, run-time parameters,
which run's predictions are current."""
from __future__ import annotations

import datetime as dt
from pathlib import Path

import pendulum
import pytest

from operators.kit import registry
from operators.pipelines.packaging import inventory
from operators.pipelines.packaging.inference import (MODEL_PARAMS, NoApprovedModel, NoModelYet, PackagingInference,
                                                     approved_model, daily_since, make_current,
                                                     register_approved_models, run_day, why_not_current)


@pytest.fixture
def root(tmp_path, monkeypatch) -> str:
    monkeypatch.setenv("DATA_ROOT", str(tmp_path))
    return str(tmp_path)


def test_only_an_approved_and_published_version_is_a_model(root):
    # none yet: the run skips itself (NoModelYet), saying that the DAG runs by itself at an approval
    with pytest.raises(NoModelYet, match="no approved version of model 'packaging' yet: this DAG runs by itself "
                                         "when one is approved.*packaging_training"):
        approved_model()
    store = registry.Registry(root, "packaging")
    store.register("v0", metrics={}, input_stats={}, lineage={}, proposed="review", reasons=[],
                   artifact="models.parquet")
    with pytest.raises(NoModelYet, match="no approved version"):
        approved_model()  # pending
    store.decide("v0", registry.REJECTED, by="person:sam")
    with pytest.raises(NoModelYet, match="no approved version"):
        approved_model()  # rejected
    version = register_approved_models(inventory.true_models(3), "v1", by="test")
    model = approved_model()
    assert model["version"] == version == "v1" and model["approved_by"] == "test"
    assert model["uri"] == f"{root}/published/packaging/versions/v1/models.parquet"
    store.register("v2", metrics={}, input_stats={}, lineage={}, proposed="approve", reasons=[],
                   artifact="models.parquet")
    assert approved_model()["version"] == "v1"  # a newer pending version does not count
    Path(model["uri"]).unlink()
    with pytest.raises(NoApprovedModel, match="approved but its artifact .* is missing") as missing:
        approved_model()
    assert not isinstance(missing.value, NoModelYet)  # a broken approved model fails the run, never skips it


@pytest.mark.parametrize("damage, words", [
    (lambda data: data[: len(data) // 2], "cannot be read as Parquet (ArrowInvalid: "),  # truncated: no footer
    (lambda data: b"x" * len(data), "cannot be read as Parquet (ArrowInvalid: "),  # overwritten
    (None, "lacks column(s) ['coef_liquid']"),  # another table
])
def test_an_approved_model_that_cannot_be_read_fails_the_first_task_naming_file_and_version(root, damage, words):
    import pandas as pd
    from batch_worker.runtime import parquet_bytes

    version = register_approved_models(inventory.true_models(3), "v1", by="test")
    uri = Path(approved_model()["uri"])
    uri.write_bytes(damage(uri.read_bytes()) if damage else parquet_bytes(
        pd.read_parquet(uri).drop(columns=["coef_liquid"])))
    with pytest.raises(NoApprovedModel) as refused:
        approved_model()
    assert not isinstance(refused.value, NoModelYet)  # fails the run: a damaged model is not "no model yet"
    message = str(refused.value)
    assert f"'packaging' model version {version}: its artifact DATA_ROOT/published/packaging/versions/{version}/" \
           "models.parquet" in message
    assert words in message and "nothing was scored and no Batch job was submitted" in message
    assert f"The file itself: {uri}" in message


def test_a_model_artifact_that_cannot_be_read_is_not_published(root):
    store = registry.Registry(root, "packaging")
    store.register("v1", metrics={}, input_stats={}, lineage={}, proposed="approve", reasons=[],
                   artifact="models.parquet")
    folder = Path(store.version_dir("v1"))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "models.parquet").write_bytes(b"PAR1 not really")
    store.decide("v1", registry.APPROVED, by="test")
    with pytest.raises(registry.RegistryError, match=r"version v1 of 'packaging': its artifact .*/registry/packaging/"
                                                     r"versions/v1/models.parquet cannot be read as Parquet"):
        store.publish("v1")
    assert not (Path(root) / "published").exists()


def test_a_daily_run_starts_where_the_last_successful_one_ended():
    until = dt.date(2026, 3, 5)
    assert daily_since(until, None, []) == dt.date(2026, 3, 4)
    assert daily_since(until, pendulum.datetime(2026, 3, 2, tz="UTC"), []) == dt.date(2026, 3, 2)
    # a run started by an approval is known only from what it published
    published = [{"window": ["2026-03-02", "2026-03-03"]}, {"window": ["2026-03-03", "2026-03-04"]}]
    assert daily_since(until, pendulum.datetime(2026, 3, 2, tz="UTC"), published) == dt.date(2026, 3, 4)
    # this run itself (cleared, run again) or a later one does not move the start: the same window again
    assert daily_since(until, None, [{"window": ["2026-03-04", "2026-03-05"]}, {"window": ["2026-03-05", "2026-03-09"]}]) \
        == dt.date(2026, 3, 4)


def test_the_run_day_is_the_data_intervals_end_else_the_day_it_runs():
    assert run_day(pendulum.datetime(2026, 3, 2, tz="UTC"), pendulum.datetime(2026, 3, 2, 0, 5, tz="UTC")) \
        == dt.date(2026, 3, 2)
    assert run_day(None, pendulum.datetime(2026, 3, 2, 15, tz="UTC")) == dt.date(2026, 3, 2)


def test_the_model_version_is_set_at_run_time_not_by_a_run():
    pipeline = PackagingInference("inference_test", scope="daily")
    assert not set(MODEL_PARAMS) & set(pipeline.params)
    assert "max_damage_probability" in pipeline.params
    with pytest.raises(ValueError, match=r"unknown run param\(s\) \['model_version'\]"):
        pipeline.check_run({name: p.value for name, p in pipeline.params.items()}, {"model_version": "v-any"})
    with pytest.raises(ValueError, match="scope must be one of"):
        PackagingInference("inference_test", scope="weekly")


class RecordingTaskInstance:
    """The running task's `ti` where a stage is called outside Airflow: what it pushes to XCom is kept."""

    def __init__(self):
        self.pushed: dict[str, object] = {}

    def xcom_push(self, key: str, value: object) -> None:
        self.pushed[key] = value


def test_a_daily_window_without_new_products_skips_the_run_and_a_monthly_one_fails(root, monkeypatch):
    """An empty daily window is an ordinary day (the run succeeds, skipped); an empty inventory is an error."""
    import airflow.sdk
    import pandas as pd
    from airflow.sdk.exceptions import AirflowSkipException

    from operators.kit import runview

    ti = RecordingTaskInstance()
    monkeypatch.setattr(airflow.sdk, "get_current_context", lambda: {"ti": ti})

    uri = inventory.ensure(f"{root}/datasets/inventory", until="2026-03-04", groups=2, products_per_group=3,
                           new_per_day=0, start_date="2026-03-01")
    stamp = pendulum.datetime(2026, 3, 4, tz="UTC")
    for scope, expected in (("daily", AirflowSkipException), ("monthly", ValueError)):
        pipeline = PackagingInference(f"inference_{scope}", scope=scope)
        params = {name: p.value for name, p in pipeline.params.items()}
        source = {"uri": uri, "started_at": 0.0, "window": ["2026-03-02", "2026-03-04"]}
        with pytest.raises(expected, match=r"no rows in the window \[2026-03-02, 2026-03-04\)"):
            pipeline.prepare(source, params, f"run-{scope}", stamp)
    # the skipped run says so, and why (a failed one is told by the failure callback)
    import json

    [skipped] = [json.loads(p.read_text()) for p in (Path(root) / "outbox").glob("*-skipped.json")]
    assert skipped["subject"] == "[inference_daily] SKIPPED at prepare: nothing to do"
    assert "run run-daily: task prepare skipped the rest of the run" in skipped["body"]
    assert "why: no rows in the window [2026-03-02, 2026-03-04) of " in skipped["body"]
    kept = ti.pushed[runview.SKIP_KEY]  # the reason the run's note and the run view show
    assert kept["task_id"] == "prepare" and kept["reason"].startswith("no rows in the window [2026-03-02, 2026-03-04)")
    pipeline = PackagingInference("inference_daily", scope="daily")
    prepared = pipeline.prepare({"uri": uri, "started_at": 0.0, "window": ["2026-03-01", "2026-03-04"], "model": {}},
                                {name: p.value for name, p in pipeline.params.items()}, "run-first", stamp)
    assert prepared["rows_ok"] == len(pd.read_parquet(uri)) == 6  # the first day's products do score


def day_run(run_id: str, start: str, end: str) -> dict:
    """The lineage a published run records (what `current/run.json` holds), for a window [start, end)."""
    return {"run_id": run_id, "window": [start, end], "uri": f"run_date={end}/{run_id}.parquet"}


def test_current_predictions_move_only_to_a_window_that_ends_no_earlier():
    current = day_run("scheduled__2026-03-07", "2026-03-06", "2026-03-07")
    assert why_not_current(day_run("later", "2026-03-07", "2026-03-08"), current) is None
    assert why_not_current(day_run("again", "2026-03-06", "2026-03-07"), current) is None  # the same day run again
    assert why_not_current(day_run("first", "2026-03-07", "2026-03-07"), None) is None  # nothing current yet
    # current/run.json written before windows were recorded: replaced, as before
    assert why_not_current(day_run("later", "2026-03-01", "2026-03-02"), {"run_id": "old"}) is None
    reason = why_not_current(day_run("backfill__2026-03-03", "2026-03-02", "2026-03-03"), current)
    assert reason == ("its window ends 2026-03-03, before the current predictions' (2026-03-07, run "
                      "scheduled__2026-03-07): an older day (a backfill, or a cleared older run) never replaces newer "
                      "predictions. Its predictions are under run_date=2026-03-03/ only")


def publish_day(out, run_id: str, start: str, end: str) -> dict | None:
    lineage = {**day_run(run_id, start, end), "uri": out.join(f"run_date={end}", f"{run_id}.parquet")}
    data = f"predictions of {run_id}".encode()
    out.write_bytes(lineage["uri"], data)
    return make_current(out, lineage, data)


def current_files(out) -> tuple[bytes, dict]:
    return out.read_bytes(out.join("current", "predictions.parquet")), out.read_json(out.join("current", "run.json"))


@pytest.fixture(params=["local", "s3"])
def scope_folder(request, tmp_path):
    """A scope's predictions folder: local, or in a fresh bucket on the local endpoint (conditional writes there
    are S3's If-Match / If-None-Match)."""
    import uuid

    from operators.kit.engine import location

    if request.param == "local":
        return location(str(tmp_path / "daily"))
    aws = request.getfixturevalue("local_aws")
    bucket = f"predictions-{uuid.uuid4().hex[:12]}"
    aws.s3.create_bucket(Bucket=bucket)
    return location(f"s3://{bucket}/predictions/packaging/daily")


def test_a_backfilled_day_is_published_under_its_date_but_never_replaces_newer_current_predictions(scope_folder):
    out = scope_folder
    assert publish_day(out, "d07", "2026-03-06", "2026-03-07") is None
    assert publish_day(out, "d08", "2026-03-07", "2026-03-08") is None
    assert current_files(out)[0] == b"predictions of d08"
    # backfilling older days: each kept under its run_date=, current/ stays at 03-08
    for day in ("03", "04", "05"):
        refused = publish_day(out, f"d{day}", f"2026-03-{int(day) - 1:02d}", f"2026-03-{day}")
        assert refused["current_run"] == "d08" and refused["current_window"] == ["2026-03-07", "2026-03-08"]
        assert f"its window ends 2026-03-{day}, before the current predictions' (2026-03-08" in refused["reason"]
        assert out.read_bytes(out.join(f"run_date=2026-03-{day}", f"d{day}.parquet")) == \
            f"predictions of d{day}".encode()
    data, pointer = current_files(out)
    assert data == b"predictions of d08" and pointer["run_id"] == "d08"
    # the newest day run again (a newer model) replaces it; a newer day too
    assert publish_day(out, "d08-again", "2026-03-07", "2026-03-08") is None
    assert current_files(out)[1]["run_id"] == "d08-again"
    assert publish_day(out, "d09", "2026-03-08", "2026-03-09") is None
    data, pointer = current_files(out)
    assert data == b"predictions of d09" and pointer["window"] == ["2026-03-08", "2026-03-09"]


def test_concurrent_publishes_leave_the_newest_window_current_with_its_own_predictions(scope_folder):
    from concurrent.futures import ThreadPoolExecutor

    out = scope_folder
    days = [f"2026-03-{day:02d}" for day in range(2, 14)]
    for _ in range(3):
        with ThreadPoolExecutor(len(days)) as pool:
            outcomes = list(pool.map(lambda end: publish_day(out, f"run-{end}", "2026-03-01", end), reversed(days)))
        data, pointer = current_files(out)
        assert pointer["run_id"] == "run-2026-03-13" and data == b"predictions of run-2026-03-13"
        assert outcomes[0] is None  # the newest day was made current; every other one either was or says why not
        assert all(o is None or o["reason"] for o in outcomes)


def test_an_older_run_whose_pointer_write_loses_to_a_newer_one_puts_the_newer_predictions_back(scope_folder):
    """The interleaving the compare-and-swap is for, made to happen: the older run read current/run.json (03-05, older
    than its day), then a newer run published completely, then the older run's predictions landed in current/."""
    from dataclasses import dataclass

    plain = scope_folder
    publish_day(plain, "d05", "2026-03-04", "2026-03-05")

    @dataclass(frozen=True)
    class NewerRunLandsInBetween(type(plain)):
        def write_bytes(self, path: str, data: bytes) -> None:
            if path.endswith("predictions.parquet") and data == b"predictions of d06":
                assert publish_day(plain, "d07", "2026-03-06", "2026-03-07") is None
            super().write_bytes(path, data)

    older = NewerRunLandsInBetween(plain.uri, plain.fs, plain.remote)
    refused = publish_day(older, "d06", "2026-03-05", "2026-03-06")
    assert refused["current_run"] == "d07" and "its window ends 2026-03-06, before" in refused["reason"]
    data, pointer = current_files(plain)
    assert pointer["run_id"] == "d07" and data == b"predictions of d07"
    assert plain.read_bytes(plain.join("run_date=2026-03-06", "d06.parquet")) == b"predictions of d06"
