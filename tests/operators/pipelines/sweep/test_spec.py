"""The sweep spec: grids, lists and files become configurations; every problem is named before anything trains."""
from __future__ import annotations

import json

import pytest

from operators.pipelines.sweep import spec


def test_a_grid_is_every_combination_with_defaults_filled_in():
    configs = spec.validate(spec.expand({"grid": {"l2": [0.1, 1.0], "holdout_days": [7, 14, 28]},
                                         "resource_class": "GPU", "id_prefix": "g"}))
    assert [c.id for c in configs] == [f"g{n}" for n in range(6)]
    assert configs[0].hyperparameters["l2"] == 0.1 and configs[5].hyperparameters["holdout_days"] == 28
    assert configs[0].hyperparameters["max_iterations"] == 25  # the trainer's default
    assert {c.queue for c in configs} == {"airbatch-gpu"}


def test_the_key_follows_hyperparameters_data_and_code_not_the_id():
    a, b = spec.validate([{"id": "a", "hyperparameters": {"l2": 2}}, {"id": "b", "hyperparameters": {"l2": 2}}])
    assert a.key("packaging", "data1", "1") == b.key("packaging", "data1", "1")
    assert a.key("packaging", "data1", "1") != a.key("packaging", "data2", "1")
    assert a.key("packaging", "data1", "1") != a.key("packaging", "data1", "2")
    assert a.key("packaging", "data1", "1") != a.key("trivial", "data1", "1")


def test_equal_values_in_another_form_are_one_configuration_with_one_key():
    """`l2: 1` and `l2: 1.0`, `holdout_days: 28.0` and `28`, a CSV's text and JSON's numbers, in any key order."""
    configs = spec.validate([
        {"id": "int", "hyperparameters": {"l2": 1, "holdout_days": 28}},
        {"id": "float", "hyperparameters": {"holdout_days": 28.0, "l2": 1.0}},
        {"id": "default", "hyperparameters": {}},
        *spec.csv_spec("id,l2,holdout_days\ncsv,1,28\n")["configurations"],
        {"id": "other", "hyperparameters": {"l2": 1.5}}])
    keys = [c.key("packaging", "data", "1") for c in configs]
    assert len(set(keys[:4])) == 1 and keys[4] != keys[0]
    assert configs[1].hyperparameters["holdout_days"] == 28 and type(configs[1].hyperparameters["holdout_days"]) is int
    assert spec.duplicates(list(zip(configs, keys))) == {"float": "int", "default": "int", "csv": "int"}


def test_a_nan_in_a_spec_reaches_the_dag_as_null_and_is_named():
    """Airflow hands a run's conf to its tasks as JSON, where a NaN inside the `sweep` object becomes null."""
    with pytest.raises(spec.SweepSpecError) as error:
        spec.validate(spec.expand({"grid": {"l2": [0.5, None]}}))
    assert "configuration 'c1': hyperparameters.l2 is null: NaN or null is not a number; give a number" in str(error.value)


def test_every_problem_names_its_configuration_and_field():
    entries = [
        {"id": "ok", "hyperparameters": {"l2": 1}},
        {"id": "ok", "hyperparameters": {}},
        {"id": "typo", "hyperparameters": {"l3": 1}},
        {"id": "range", "hyperparameters": {"holdout_days": 0}},
        {"id": "where", "hyperparameters": {}, "resource_class": "TPU"},
        {"id": "rule", "hyperparameters": {"holdout_days": 30, "max_label_age_days": 20}},
        {"hyperparameters": {}},
    ]
    with pytest.raises(spec.SweepSpecError) as error:
        spec.validate(entries)
    text = str(error.value)
    assert "7 problem" not in text and "6 problem(s)" in text and "nothing was trained" in text
    assert "configuration 'ok': field id repeats configuration #0" in text
    assert "configuration 'typo': unknown hyper-parameter(s) ['l3']" in text
    assert "configuration 'range': hyperparameters.holdout_days must be >= 1, got 0" in text
    assert "configuration 'where': field resource_class must be one of ['CPU', 'GPU'], got 'TPU'" in text
    assert "configuration 'rule': max_label_age_days (20) must be greater than holdout_days (30)" in text
    assert "configuration #6: field id must be a non-empty text" in text


def test_spec_shape_errors():
    with pytest.raises(spec.SweepSpecError, match="exactly one of 'grid'"):
        spec.expand({"grid": {"l2": [1]}, "configurations": []})
    with pytest.raises(spec.SweepSpecError, match="unknown field"):
        spec.expand({"grid": {"l2": [1]}, "workers": 3})
    with pytest.raises(spec.SweepSpecError, match="more than 100,000"):
        spec.expand({"grid": {"l2": list(range(1, 1001)), "holdout_days": list(range(1, 102))}})
    with pytest.raises(spec.SweepSpecError, match="not both and not neither"):
        spec.load(None, None)


def test_a_csv_file_under_the_data_root(data_root):
    path = data_root / "sweep.csv"
    path.write_text("id,resource_class,l2,holdout_days\na,CPU,0.5,\nb,GPU,2,14\n")
    configs = spec.load(None, str(path))
    assert [(c.id, c.resource_class, c.hyperparameters["l2"], c.hyperparameters["holdout_days"]) for c in configs] == [
        ("a", "CPU", 0.5, 28), ("b", "GPU", 2.0, 14)]
    path.write_text("id,l2\na,lots\n")
    with pytest.raises(spec.SweepSpecError, match=r"line 2 \(configuration 'a'\), column l2: 'lots' is not a number"):
        spec.load(None, str(path))


def test_a_json_file_and_confinement(data_root, tmp_path):
    path = data_root / "sweep.json"
    path.write_text(json.dumps({"configurations": [{"id": "x", "hyperparameters": {"l2": 3}}]}))
    assert [c.id for c in spec.load(None, str(path))] == ["x"]
    outside = tmp_path / "elsewhere.json"
    outside.write_text(path.read_text())
    with pytest.raises(ValueError, match="outside the allowed input locations"):
        spec.load(None, str(outside))
