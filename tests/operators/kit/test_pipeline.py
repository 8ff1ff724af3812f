"""The pipeline factory: the DAG's shape with and without each optional stage, the generated params, the run checks."""
from __future__ import annotations

import jinja2
import pendulum
import pytest

from airflow.sdk import Asset, Param

from operators.kit.evaluation import Evaluator, Limit
from operators.kit.pipeline import (DataSource, LookbackWindow, PublishTarget, UnitPipeline, run_interval,
                                    shown_location, unit_pipeline, weekly_intervals)

START = pendulum.datetime(2026, 1, 1, tz="UTC")
FULL = ["dataset", "prepare", "plan", "run_shard", "collect", "evaluate", "gate", "ask_reviewer", "auto_decision",
        "reviewed", "decide", "publish", "notify"]


class TinyEvaluator(Evaluator):
    name = "tiny"
    limits = (Limit("error_p50", "max", 0.3, 0.6, "median error"),
              Limit("coverage", "min", 0.9, None, "scored units / units"))


def build(**options):
    options = {"workload": "noop", "start_date": START, "doc_md": "a test pipeline", "tags": ["test"], **options}
    return unit_pipeline("probe", **options)


def upstream(dag, task_id: str) -> set[str]:
    return set(dag.get_task(task_id).upstream_task_ids)


def test_without_an_evaluator_the_dag_ends_at_its_summary_with_no_gate_approval_or_publish():
    dag = build()
    assert sorted(dag.task_ids) == sorted(["dataset", "prepare", "plan", "run_shard", "summary"])
    assert upstream(dag, "summary") == {"run_shard", "prepare"}
    assert upstream(dag, "prepare") == {"dataset"}
    assert "review" not in dag.params and not any(name.startswith("approve_") for name in dag.params)
    # no success summary unless asked for; a failure is always notified, with its whole error
    assert "notify" not in dag.task_ids and dag.default_args["on_failure_callback"] is not None
    notified = build(notify=True)
    assert "notify" in notified.task_ids and notified.default_args["on_failure_callback"] is not None


def test_with_an_evaluator_and_a_publish_target_every_stage_is_wired_in_order():
    asset = Asset("probe_current")
    dag = build(evaluator=TinyEvaluator(), model="probe", publish=PublishTarget(asset=asset))
    assert sorted(dag.task_ids) == sorted(FULL)
    assert upstream(dag, "evaluate") == {"collect", "prepare"}
    assert upstream(dag, "gate") == {"evaluate"}
    assert set(dag.get_task("gate").downstream_task_ids) == {"ask_reviewer", "auto_decision"}
    assert upstream(dag, "decide") == {"evaluate", "reviewed", "auto_decision"}
    assert upstream(dag, "publish") == {"evaluate", "decide"}
    assert "publish" in upstream(dag, "notify")
    assert dag.get_task("publish").outlets == [asset]
    assert dag.get_task("decide").trigger_rule == "none_failed"
    assert dag.default_args["on_failure_callback"] is not None
    without_publish = build(evaluator=TinyEvaluator(), model="probe")
    assert "publish" not in without_publish.task_ids and "decide" in without_publish.task_ids


def test_params_are_generated_from_the_kit_the_workload_the_source_and_the_limits():
    dag = build(evaluator=TinyEvaluator(), model="probe", source=LookbackWindow(lookback_days=14),
                defaults={"queue": "airbatch-gpu", "sleep_s": 0.5},
                extra_params={"note": Param(None, type=["string", "null"], description="free text")})
    params = {name: dag.params.get_param(name) for name in dag.params}
    assert all(param.description for param in params.values())
    assert params["input_uri"].value is None and "null" in params["input_uri"].schema["type"]
    assert params["queue"].value == "airbatch-gpu" and params["sleep_s"].value == 0.5  # defaults given
    assert params["salt"].schema["type"] == ["string", "null"]  # the workload's nullable string
    assert params["sleep_s"].schema["maximum"] == 3600
    assert params["lookback_days"].value == 14
    assert params["approve_error_p50"].value == 0.3 and params["reject_error_p50"].value == 0.6
    assert params["reject_coverage"].value is None and params["reject_coverage"].schema["type"] == ["number", "null"]
    assert "median error" in params["approve_error_p50"].description
    # every evaluator gets the kit's dead-letter limit: any dead letter asks a person unless the run allows a share
    assert params["approve_dead_letter_share"].value == 0.0 and params["reject_dead_letter_share"].value is None
    assert "dead-lettered" in params["approve_dead_letter_share"].description
    assert params["review"].schema["enum"] == ["auto", "always"]
    assert "| `bucket_count` | `3000` |" in dag.doc_md and dag.doc_md.startswith("a test pipeline")


class ClashingSource(DataSource):
    def params(self):
        return {"bucket_count": Param(5, type="integer", description="clashes with the kit's")}


@pytest.mark.parametrize("options, message", [
    ({"source": ClashingSource()}, "param 'bucket_count' of data source ClashingSource clashes with the param of the kit"),
    ({"extra_params": {"salt": Param("x", type="string", description="d")}},
     "param 'salt' of extra_params clashes with the param of workload 'noop'"),
    ({"extra_params": {"note": Param("x", type="string")}}, "param 'note' of extra_params has no description"),
    ({"defaults": {"bucket_cuont": 3}}, "defaults for unknown param(s) ['bucket_cuont']"),
    ({"defaults": {"bucket_count": 0}}, "the default 0 of param 'bucket_count' is not allowed: 0 is less than the minimum"),
    ({"publish": PublishTarget(asset=Asset("x"))}, "a publish target needs an evaluator"),
    ({"evaluator": TinyEvaluator(), "model": "{{ conn }}"}, "model '{{ conn }}' must be letters"),
])
def test_a_wrong_pipeline_definition_fails_when_the_dag_is_built(options, message):
    with pytest.raises(Exception) as err:
        build(**options)
    assert message in str(err.value)


def test_the_run_check_refuses_unknown_params_and_contradictory_workload_parameters_naming_them():
    pipeline = UnitPipeline("probe", workload="pricing", start_date=START, doc_md="d", tags=["t"])
    params = pipeline.build().params.dump()
    assert pipeline.check_run(params, {"bucket_count": 4})["min_price_ratio"] == params["min_price_ratio"]
    with pytest.raises(ValueError, match=r"unknown run param\(s\) \['max_chnage'\] \(did you mean 'max_change' for "
                                         r"'max_chnage'\?\); known: \['batches_per_child', "):
        pipeline.check_run(params, {"max_chnage": 0.2})
    with pytest.raises(ValueError, match=r"unknown run param\(s\) \['zzz'\]; known: \["):  # nothing close: no guess
        pipeline.check_run(params, {"zzz": 0.2})
    with pytest.raises(ValueError) as err:
        pipeline.check_run({**params, "min_price_ratio": 1.5, "max_price_ratio": 1.3}, {})
    assert "min_price_ratio" in str(err.value) and "max_price_ratio" in str(err.value)


def test_the_default_source_needs_input_uri_and_a_lookback_window_ends_with_the_interval():
    with pytest.raises(ValueError, match="input_uri is empty"):
        DataSource().resolve({"input_uri": None}, "/runs/x", None)
    assert DataSource().resolve({"input_uri": "/data/in.csv"}, "/runs/x", None) == "/data/in.csv"
    window = LookbackWindow(lookback_days=28).window({"lookback_days": 28}, pendulum.datetime(2026, 2, 16, tz="UTC"))
    assert window == ("2026-01-19", "2026-02-16")


def test_a_publish_target_calls_its_own_publisher_or_the_registry(monkeypatch):
    calls = []
    target = PublishTarget(asset=Asset("a"), publish=lambda model, version: calls.append((model, version)) or "uri")
    assert target.run("m", "v1") == "uri" and calls == [("m", "v1")]
    from operators.kit import registry

    monkeypatch.setattr(registry, "publish", lambda model, version: f"published {model} {version}")
    assert PublishTarget(asset=Asset("a")).run("m", "v2") == "published m v2"


def test_locations_are_shown_relative_to_the_data_root(monkeypatch):
    monkeypatch.setenv("DATA_ROOT", "/srv/data/")
    assert shown_location("/srv/data/registry/m/versions/v1/report.html") == \
        "DATA_ROOT/registry/m/versions/v1/report.html"
    assert shown_location("/srv/database/x") == "/srv/database/x"  # a sibling folder is not under the root
    assert shown_location("s3://b/p/r.html", root="s3://b/p") == "DATA_ROOT/r.html"


def test_the_approval_page_shows_the_reasons_the_summary_lines_and_the_report_location():
    dag = build(evaluator=TinyEvaluator(), model="probe")
    ask = dag.get_task("ask_reviewer")
    evaluation = {"version": "v7", "proposal": "review", "reasons": ["error_p50 0.41 is above 0.3 (approve)"],
                  "lines": ["error_p50 0.41, coverage 0.97"], "report_location": "DATA_ROOT/registry/probe/r.html"}

    class TaskInstance:
        @staticmethod
        def xcom_pull(task_ids):
            assert task_ids == "evaluate"
            return evaluation

    env = jinja2.Environment(undefined=jinja2.StrictUndefined)
    subject = env.from_string(ask.subject).render(ti=TaskInstance())
    body = env.from_string(ask.body).render(ti=TaskInstance())
    assert subject == "Approve probe version v7?"
    assert "Proposed: **review**" in body and "- error_p50 0.41 is above 0.3 (approve)" in body
    assert "- error_p50 0.41, coverage 0.97" in body and "Report: DATA_ROOT/registry/probe/r.html" in body


def test_the_success_summary_of_a_pipeline_without_an_evaluator_has_no_version_line(data_root):
    import json

    pipeline = UnitPipeline("probe", workload="noop", notify=True, start_date=START, doc_md="d", tags=["t"])
    prepared = {"window": None, "started_at": 0.0, "rows_in": 30, "rows_quarantined": 0, "quarantined_by_reason": {}}
    fanout = {"batches": 3, "shards": 1, "units": 10, "succeeded": 3, "cached": 0, "failed": 0, "units_failed": 0,
              "dead_letter": None, "failures_by_class": {}, "first_errors": {}}
    summary = pipeline.notify(prepared, fanout, None, None, None, "probe", "manual__1")
    assert "version" not in summary and summary["fanout"]["succeeded"] == 3
    [message] = [json.loads(p.read_text()) for p in (data_root / "outbox").glob("*.json")]
    assert message["subject"] == "[probe] succeeded (10 units: 10 computed or cached, 0 dead-lettered)"
    assert "None" not in message["body"] and "rows: 30 read, 0 quarantined" in message["body"]


def test_weekly_intervals_run_monday_to_monday_one_at_a_time_and_refuse_another_day():
    import pendulum

    from operators.kit.pipeline import weekly_intervals

    settings = weekly_intervals("2026-01-05", catchup=True)
    assert settings["start_date"] == pendulum.datetime(2026, 1, 5, tz="UTC")
    assert settings["catchup"] is True and settings["max_active_runs"] == 1
    interval = settings["schedule"].infer_manual_data_interval(run_after=pendulum.datetime(2026, 2, 18, tz="UTC"))
    assert (interval.start, interval.end) == (pendulum.datetime(2026, 2, 9, tz="UTC"),
                                              pendulum.datetime(2026, 2, 16, tz="UTC"))
    with pytest.raises(ValueError, match="2026-01-06"):
        weekly_intervals("2026-01-06")


def utc(*args) -> pendulum.DateTime:
    return pendulum.datetime(*args, tz="UTC")


def test_a_run_with_a_data_interval_keeps_it_whatever_its_run_after():
    weekly = weekly_intervals("2026-01-05")["schedule"]
    assert run_interval(weekly, utc(2026, 3, 4), utc(2026, 2, 9), utc(2026, 2, 16)) == (utc(2026, 2, 9),
                                                                                        utc(2026, 2, 16))


@pytest.mark.parametrize("run_after, start, end", [
    (utc(2026, 2, 18, 9, 30), utc(2026, 2, 9), utc(2026, 2, 16)),  # mid-week: the last complete week
    (utc(2026, 2, 16), utc(2026, 2, 9), utc(2026, 2, 16)),  # on the boundary: the week ending then
    (utc(2026, 2, 15, 23, 59), utc(2026, 2, 2), utc(2026, 2, 9)),
])
def test_a_run_without_a_logical_date_covers_the_weekly_interval_its_run_after_ends(run_after, start, end):
    weekly = weekly_intervals("2026-01-05")["schedule"]
    assert run_interval(weekly, run_after, None, None) == (start, end)
    window = LookbackWindow(lookback_days=28).window({"lookback_days": 28}, run_interval(weekly, run_after)[1])
    assert window == ((end - pendulum.duration(days=28)).date().isoformat(), end.date().isoformat())


def test_a_run_without_a_logical_date_of_an_unscheduled_or_asset_or_time_dag():
    unscheduled = build(schedule=None)
    run_after = utc(2026, 2, 18, 9, 30)
    assert run_interval(unscheduled.timetable, run_after) == (run_after, run_after)
    window = LookbackWindow(lookback_days=7).window({"lookback_days": 7}, run_interval(unscheduled.timetable,
                                                                                      run_after)[1])
    assert window == ("2026-02-11", "2026-02-18")  # ends at run_after's date
    # the inference DAGs' Airflow-3 SDK timetable (cron or an asset event): the cron's last complete day
    from operators.pipelines.packaging.inference import asset_or_time

    daily = asset_or_time("daily", "2026-01-01")["schedule"]
    assert run_interval(daily, run_after) == (utc(2026, 2, 17), utc(2026, 2, 18))
    assert run_interval(None, run_after) == (run_after, run_after)  # no DAG at hand: the instant it runs
    with pytest.raises(ValueError, match="neither a data interval nor a run_after"):
        run_interval(daily, None)


class RecordingSource(LookbackWindow):
    def __init__(self, seen: list):
        super().__init__(lookback_days=28)
        self.seen = seen

    def resolve(self, params, run_root, data_interval_end) -> str:
        self.seen.append(("resolve", data_interval_end))
        return "/data/in.csv"


class Run:
    """The `dag_run` of a task's context, as Airflow 3 gives a run triggered with `"logical_date": null`."""
    conf: dict = {}
    run_after = utc(2026, 2, 18, 9, 30)


def test_the_stages_of_a_run_without_a_logical_date_get_the_end_of_its_inferred_interval(monkeypatch):
    """Airflow leaves data_interval_start/end, logical_date, ds and ts out of such a run's context."""
    from operators.kit import prep

    seen: list = []
    pipeline = UnitPipeline("probe", workload="noop", evaluator=TinyEvaluator(), model="probe",
                            source=RecordingSource(seen), **weekly_intervals("2026-01-05"), doc_md="d", tags=["t"])
    dag = pipeline.build()
    monkeypatch.setattr(pipeline, "own_run_root", lambda run_id: f"/runs/{run_id}")
    monkeypatch.setattr(pipeline, "check_run", lambda params, conf: {})

    def prepare_configured(uri, schema, out, bucket_count, *, window, **kwargs):
        seen.append(("prepare", window))
        raise prep.EmptyWindow("stop here")

    monkeypatch.setattr(prep, "prepare_configured", prepare_configured)
    context = {"params": dag.params.dump(), "dag": dag, "dag_run": Run(), "run_id": "manual__2026-02-18T09:30"}
    source = dag.get_task("dataset").python_callable(**context)
    with pytest.raises(prep.EmptyWindow):
        dag.get_task("prepare").python_callable(source, **context)
    assert seen == [("resolve", utc(2026, 2, 16)), ("prepare", ("2026-01-19", "2026-02-16"))]

    evaluated = []
    monkeypatch.setattr(pipeline, "evaluate", lambda *args, **kwargs: evaluated.append((args, kwargs)))
    dag.get_task("evaluate").python_callable({}, {}, **context)
    [((_, _, _, run_id, logical_date, end), kwargs)] = evaluated
    assert logical_date is None and end == utc(2026, 2, 16)
    assert kwargs == {"data_interval_start": utc(2026, 2, 9)}  # the version is compared with the week before
    lineage = pipeline.lineage({"window": ["2026-01-19", "2026-02-16"], "input_uri": "/data/in.csv",
                                "manifest_uri": "m"}, {"job_ids": []}, dag.params.dump(), run_id, logical_date)
    assert lineage["logical_date"] is None  # not the text "None"


def test_every_conf_key_is_checked_against_the_dags_params_with_the_closest_names():
    from operators.kit.pipeline import check_conf

    check_conf("probe", None, ["repeats"])
    check_conf("probe", {"repeats": 2}, ["repeats", "small"])
    with pytest.raises(ValueError) as err:
        check_conf("probe", {"repeat": 3, "smal": True}, ["cases", "repeats", "small"])
    assert str(err.value).startswith("probe: unknown run param(s) ['repeat', 'smal'] (did you mean 'repeats' for "
                                     "'repeat', 'small' for 'smal'?); known: ['cases', 'repeats', 'small']")
    # NaN never reaches a task as NaN in Airflow 3.3 (it arrives as null); should it, it is named, wherever it is
    with pytest.raises(ValueError, match=r"run param 'sweep.grid.l2\[1\]' is nan: NaN and Infinity are not numbers"):
        check_conf("probe", {"sweep": {"grid": {"l2": [1.0, float("nan")]}}}, ["sweep"])


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_a_number_param_refuses_nan_and_infinity_when_a_run_is_created(value):
    """What Airflow's API server runs on a run's conf (SerializedParam.resolve): each param's JSON Schema."""
    from airflow.serialization.definitions.param import SerializedParam

    dag = build()
    for name in ("budget", "min_success_ratio", "sleep_s"):  # nullable, bounded, workload parameter
        param = SerializedParam(value, description=dag.params.get_param(name).description,
                                **dag.params.get_param(name).schema)
        with pytest.raises(Exception) as err:
            param.resolve(raises=True)
        # NaN passes every bound, so only the schema's NOT_FINITE refuses it; an infinity may meet a bound first
        words = ["NaN, Infinity and -Infinity are not numbers: give a finite number"]
        if value != value:
            assert str(err.value).startswith("nan should not be valid under {'description': 'NaN, Infinity"), name
        else:
            words += ["is less than the minimum", "is greater than the maximum"]
        assert any(word in str(err.value) for word in words), (name, str(err.value))
    for name, ok in (("budget", None), ("budget", 12.5), ("min_success_ratio", 1), ("sleep_s", 0.0)):
        assert SerializedParam(ok, **dag.params.get_param(name).schema).resolve(raises=True) == ok


class ScoreEvaluator(Evaluator):
    """No limit about failures of its own: the dead-letter limit comes from the kit."""
    name = "score"
    limits = (Limit("score_mean", "max", 1.0, 2.0, "mean score"),)

    def metrics(self, outputs, prepared, fanout):
        return {"score_mean": float(outputs["score"].mean())}


def shard_results(folder, scores) -> str:
    import json

    from batch_worker.runtime import parquet_bytes
    import pandas as pd

    out = folder / "batch0" / "result.parquet"
    out.parent.mkdir(parents=True)
    out.write_bytes(parquet_bytes(pd.DataFrame({"unit": [f"u{i}" for i in range(len(scores))], "score": scores})))
    results = folder / "results" / "shard-0.json"
    results.parent.mkdir(parents=True)
    results.write_text(json.dumps({"batches": [{"batch_id": 0, "output": str(out)}], "failed": []}))
    return str(results)


def test_a_run_with_dead_letters_is_reviewed_not_auto_approved_and_the_param_can_allow_their_share(data_root):
    """The scenario of 6 dead-lettered units of 300: the pipeline's evaluate and decide stages with its params."""
    import json

    pipeline = UnitPipeline("probe", workload="noop", evaluator=ScoreEvaluator(), model="probe", start_date=START,
                            doc_md="d", tags=["t"])
    params = pipeline.build().params.dump()
    prepared = {"units": 300, "rows_ok": 300, "rows_in": 300, "rows_quarantined": 0, "quarantined_by_reason": {},
                "window": None, "started_at": 0.0, "input_uri": "/in.csv", "manifest_uri": "m"}
    fanout = {"results": [shard_results(data_root / "runs" / "one", [0.5] * 294)], "job_ids": [], "batches": 30,
              "succeeded": 29, "cached": 0, "failed": 1, "units": 300, "units_computed": 294, "units_cached": 0,
              "units_failed": 6, "dead_letter": "/x/dead_letter.parquet"}
    end = utc(2026, 2, 16)
    held = pipeline.evaluate(fanout, prepared, params, "manual__1", end, end)
    assert held["proposal"] == "review" and held["reasons"][0] == "dead_letter_share 0.02 > approve limit 0"
    allowed = pipeline.evaluate(fanout, prepared, {**params, "approve_dead_letter_share": 0.05}, "manual__2", end,
                                end)
    assert allowed["proposal"] == "approve"
    decision = pipeline.decide(allowed, None)
    assert (decision["status"], decision["by"]) == ("Approved", "thresholds")
    summary = pipeline.notify(prepared, fanout, allowed, decision, None, "probe", "manual__2")
    [message] = [json.loads(p.read_text()) for p in (data_root / "outbox").glob("*.json")]
    assert message["subject"] == (f"[probe] Approved: version {allowed['version']} "
                                  "(300 units: 294 computed, 0 cached, 6 dead-lettered)")
    assert summary["fanout"]["units_computed"] == 294


def test_a_backfilled_week_approved_after_a_newer_one_is_published_but_does_not_become_current(data_root):
    """The pipeline's evaluate, decide, publish and notify stages, the newer week first, then its backfill."""
    import json

    pipeline = UnitPipeline("probe", workload="noop", evaluator=ScoreEvaluator(), model="probe", start_date=START,
                            publish=PublishTarget(asset=Asset("probe_current")), doc_md="d", tags=["t"])
    params = pipeline.build().params.dump()
    prepared = {"units": 4, "rows_ok": 4, "rows_in": 4, "rows_quarantined": 0, "quarantined_by_reason": {},
                "window": None, "started_at": 0.0, "input_uri": "/in.csv", "manifest_uri": "m"}

    def run(name: str, start, end, scores) -> tuple[dict, dict, str]:
        fanout = {"results": [shard_results(data_root / "runs" / name, scores)], "job_ids": [], "batches": 1,
                  "succeeded": 1, "cached": 0, "failed": 0, "units": 4, "units_failed": 0}
        evaluation = pipeline.evaluate(fanout, prepared, params, name, start, end, data_interval_start=start)
        decision = pipeline.decide(evaluation, None)
        published = pipeline.publish(evaluation, decision)
        pipeline.notify(prepared, fanout, evaluation, decision, published, "probe", name)
        return evaluation, decision, published

    newer, decided, published = run("scheduled__w3", utc(2026, 1, 19), utc(2026, 1, 26), [0.5] * 4)
    assert decided["status"] == "Approved" and "not_current" not in decided
    assert published.endswith("/published/probe/current/outputs.parquet")
    older, decided, published = run("backfill__w1", utc(2026, 1, 5), utc(2026, 1, 12), [0.4] * 4)
    assert older["comparison"]["previous_version"] is None  # nothing approved for an interval before it
    assert decided["status"] == "Approved" and decided["not_current"]["current"] == newer["version"]
    assert published.endswith(f"/published/probe/versions/{older['version']}/outputs.parquet")
    pointer = json.loads((data_root / "published" / "probe" / "current" / "version.json").read_text())
    assert pointer["version"] == newer["version"]
    [message] = [m for m in (json.loads(p.read_text()) for p in (data_root / "outbox").glob("*.json"))
                 if m["data"]["run_id"] == "backfill__w1"]
    assert f"not made current (current stays {newer['version']})" in message["body"]
    assert "never replaces a newer current version" in message["body"]
