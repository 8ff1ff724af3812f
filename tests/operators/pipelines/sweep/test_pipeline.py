"""The sweep's stages without Airflow running: the data slice, batches per resource class, shards per queue."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from operators.kit.prep import read_manifest
from operators.pipelines.sweep import spec
from operators.pipelines.sweep.pipeline import SweepPipeline

SYNTHETIC = {"input_uri": None, "dataset_groups": 2, "dataset_weeks": 2, "dataset_labels_per_week": 200,
             "dataset_seed": 0}


def test_the_data_slice_is_named_by_its_content(data_root):
    pipeline = SweepPipeline("training_sweep")
    first = pipeline.data_slice(SYNTHETIC, str(data_root / "runs" / "a"))
    assert first == pipeline.data_slice(SYNTHETIC, str(data_root / "runs" / "b"))
    assert first.startswith(str(data_root / "outputs" / "sweep_train" / "_data"))
    assert first != pipeline.data_slice({**SYNTHETIC, "dataset_seed": 1}, str(data_root / "runs" / "c"))


def test_input_labels_go_through_the_kits_prep(data_root):
    from operators.pipelines.packaging import packaging_data

    labels = packaging_data.week_labels(0, groups=2, products_per_group=10, labels_per_week=100,
                                        start_date="2026-01-05", seed=3)
    path = data_root / "labels.csv"
    labels.to_csv(path, index=False)
    pipeline = SweepPipeline("training_sweep")
    uri = pipeline.data_slice({**SYNTHETIC, "input_uri": str(path)}, str(data_root / "runs" / "a"))
    assert len(pd.read_parquet(uri)) == len(labels)
    labels.drop(columns=["fragility"]).to_csv(path, index=False)
    with pytest.raises(ValueError, match="fragility"):
        pipeline.data_slice({**SYNTHETIC, "input_uri": str(path)}, str(data_root / "runs" / "b"))


def test_batches_per_resource_class_and_shards_per_queue(data_root):
    configs = spec.validate([{"id": f"c{n}", "hyperparameters": {"l2": n + 1.0},
                              "resource_class": "GPU" if n % 3 == 0 else "CPU"} for n in range(10)])
    keyed = [(c, c.key("trivial", None, "1")) for c in configs]
    pipeline = SweepPipeline("training_sweep")
    root = str(data_root / "runs" / "sweep")
    manifests, batch_of = pipeline.write_batches(root, keyed, per_batch=2)
    assert {cls: m["configurations"] for cls, m in manifests.items()} == {"CPU": 6, "GPU": 4}
    ids = [read_manifest(m["manifest_uri"])["batch_id"].tolist() for m in manifests.values()]
    assert sorted(ids[0] + ids[1]) == list(range(5))  # unique across the classes
    assert sorted(batch_of) == sorted(key for _, key in keyed)
    shards = pipeline.plan({"manifests": manifests, "run_root": root, "data_uri": None},
                           {"trainer": "trivial", "batches_per_shard": 2, "batches_per_child": 0,
                            "shard_timeout_minutes": 10, "runnable_timeout_s": 30})
    assert [(s["job_queue"], s["shard"]["index"]) for s in shards] == [
        ("airbatch-cpu", 0), ("airbatch-cpu", 1), ("airbatch-gpu", 2)]
    assert shards[2]["shard"]["label"].startswith("GPU shard 2: batches ")
    assert {s["runnable_timeout_s"] for s in shards} == {30}


def test_a_configuration_that_repeats_another_is_trained_once_and_reported(data_root, capsys):
    pipeline = SweepPipeline("training_sweep")
    params = {name: param.value for name, param in pipeline.params.items()}
    params.update(trainer="trivial", sweep={"configurations": [
        {"id": "a", "hyperparameters": {"l2": 1}}, {"id": "b", "hyperparameters": {"l2": 2.0}},
        {"id": "a-again", "hyperparameters": {"l2": 1.0}},
        {"id": "a-on-gpu", "hyperparameters": {"l2": 1}, "resource_class": "GPU"}]})
    prepared = pipeline.prepare(params, {"sweep": params["sweep"], "trainer": "trivial"}, "manual__dedupe")
    assert prepared["count"] == 4 and prepared["duplicates"] == 2
    assert prepared["duplicates_shown"] == {"a-again": "a", "a-on-gpu": "a"}
    # two configurations to train, on the CPU queue only: the GPU one repeats "a"
    assert {cls: m["configurations"] for cls, m in prepared["manifests"].items()} == {"CPU": 2}
    trained = [read_manifest(m["manifest_uri"]) for m in prepared["manifests"].values()]
    assert sum(len(t) for t in trained) == 1 and int(trained[0]["rows"].sum()) == 2
    table = pd.read_parquet(prepared["configurations"]).set_index("config_id")["duplicate_of"]
    assert table.astype(object).where(table.notna(), None).to_dict() == {"a": None, "b": None, "a-again": "a",
                                                                         "a-on-gpu": "a"}
    assert "2 repeat an earlier configuration's hyper-parameters and get its outcome, not trained again " \
           "(a-again as a, a-on-gpu as a)" in capsys.readouterr().out


def test_a_repeated_configuration_gets_the_outcome_of_the_one_it_repeats():
    from operators.pipelines.sweep import outcome

    configurations = pd.DataFrame({"config_id": ["a", "b", "a-again"], "duplicate_of": ["", "", "a"]})
    configurations["duplicate_of"] = configurations["duplicate_of"].replace("", None)
    rows = [{"config_id": c, "status": "trained", "failure_class": None, "error": None, "job_id": f"job-{c}",
             "score": score, "holdout_auc": 0.7, "units_fitted": 3, "batch_id": 0, "attempts": 1}
            for c, score in (("a", 0.25), ("b", 0.5), ("a-again", None))]
    rows[2].update(status="not_run", job_id=None, units_fitted=None, attempts=0)
    assert outcome.copy_duplicates(rows, configurations) == {"a-again": "a"}
    assert rows[2] == {**rows[0], "config_id": "a-again", "status": "duplicate", "attempts": 0}
    summary = {"duplicates": 1, "duplicates_shown": {"a-again": "a"}}
    assert outcome._duplicates_line(summary).startswith("1 configuration(s) repeat an earlier configuration's "
                                                        "hyper-parameters: trained once")


def test_the_forms_default_sweep_is_a_valid_small_grid_that_gives_way_to_a_file():
    from operators.pipelines.sweep.pipeline import DEFAULT_SWEEP, chosen_spec

    pipeline = SweepPipeline("training_sweep")
    default = pipeline.params["sweep"].value
    assert default == DEFAULT_SWEEP and default is not DEFAULT_SWEEP
    assert 1 < len(spec.validate(spec.expand(default))) <= 10
    # the form and the REST API send `sweep` at its default beside a file: the file is trained
    assert chosen_spec({"sweep": default, "sweep_uri": "/data/spec.csv"}) == (None, "/data/spec.csv")
    assert chosen_spec({"sweep": default, "sweep_uri": None}) == (default, None)
    # a sweep of one's own beside a file is still refused by spec.load, naming both params
    mine = {"grid": {"l2": [2.0]}}
    assert chosen_spec({"sweep": mine, "sweep_uri": "/data/spec.csv"}) == (mine, "/data/spec.csv")
    with pytest.raises(spec.SweepSpecError, match="'sweep'.*'sweep_uri'"):
        spec.load(mine, "/data/spec.csv")


def test_the_summary_log_shows_the_leaderboard_and_failures_as_tables_not_a_dict():
    from operators.pipelines.sweep import outcome

    hyper = [{"l2": l2, "holdout_days": 28, "tolerance": 1e-6} for l2 in (0.1, 10.0)]
    shown = outcome.shown_parameters([json.dumps(h) for h in hyper])
    assert shown == ["l2"]  # holdout_days and tolerance are at the trainer's defaults in every configuration
    summary = {"dag_id": "training_sweep", "run_id": "manual__x", "configurations": 3,
               "counts": {"trained": 2, "failed": 1}, "duplicates": 0, "duplicates_shown": {},
               "leaderboard": [{"config_id": f"c{n}", "score": score, "holdout_auc": 0.71234, "hyperparameters": h,
                                "settings": outcome.settings_text(h, shown)}
                               for n, (score, h) in enumerate(zip((0.2512345678, 0.3), hyper))],
               "failures_by_class": {"no_fit": {"count": 1, "first_error": "configuration s: no unit could be fitted"}},
               "capacity_shortages": [], "throttled_submits": 0, "report": "/data/runs/x/report.md", "trend": [],
               "history": {},
               "history_sweeps": [{"started": "2026-01-01 00:00:00+00:00", "run_id": "manual__x", "configurations": 3,
                                   "trained": 2, "cached": 0, "failed": 1, "best_config_id": "c0",
                                   "best_score": 0.2512345678}],
               "cost": {"cost": 0.0000026, "currency": "USD", "per_unit": 0.0000009, "vcpu_hours": 0.0004,
                        "gpu_hours": 0.0,
                        "label": "estimate (local endpoint: the same list rates, nothing was charged)"}}
    summary["note"] = outcome.note_text(summary)
    assert summary["note"] == "3 configurations: 1 failed, 2 trained; best c0 (score 0.251235); cost $0.0000026 " \
                              "(estimate)"
    text = outcome.log_text(summary)
    assert "{" not in text  # no dict, no JSON
    lines = text.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("rank"))
    assert lines[header].split() == ["rank", "configuration", "score", "holdout", "AUC", "hyper-parameters"]
    assert lines[header + 2].split() == ["1", "c0", "0.251235", "0.7123", "l2=0.1"]
    assert lines[header + 3].split() == ["2", "c1", "0.3", "0.7123", "l2=10.0"]
    assert any(line.split()[:2] == ["no_fit", "1"] and line.endswith("no unit could be fitted") for line in lines)
    assert "cost $0.0000026" in text and text.endswith("report: /data/runs/x/report.md")
    report = outcome.report_text(summary)
    assert "## Cost" in report and "| manual__x | 3 | 2 | 0 | 1 | c0 | 0.251235 |" in report
