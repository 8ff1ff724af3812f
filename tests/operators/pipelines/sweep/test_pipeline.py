"""The sweep's stages without Airflow running: the data slice, batches per resource class, shards per queue."""
from __future__ import annotations

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
