"""The workload contract: discovery (package modules, entry points), parameters, output schema, light imports."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from batch_worker import workloads
from batch_worker.cache import RESULT_FILE, cache_key
from batch_worker.workloads import (OutputColumn, OutputSchema, OutputSchemaError, Parameter, UnknownWorkload,
                                    get_workload, registered_workloads)

BUILTIN = {"noop", "pricing", "gpu_benchmark"}

TEAM_MODULE = '''
from batch_worker.schema import Column, InputSchema
from batch_worker.workloads import OutputColumn, OutputSchema, Parameter, Workload


class ScaleWorkload(Workload):  # no @register: the entry point is the registration
    name = "team_scale"
    version = "1"
    schema = InputSchema(columns=(Column("unit_id", "string"), Column("value", "float")), unit_key=("unit_id",))
    parameters = (Parameter("factor", "number", 2.0, "Multiplies every value", exclusive_minimum=0),)
    output = OutputSchema((OutputColumn("unit_id", "string", nullable=False), OutputColumn("scaled", "float")))

    def run(self, batch, params):
        return batch.assign(scaled=batch["value"] * params["factor"])[["unit_id", "scaled"]]
'''


def team_distribution(site: Path) -> Path:
    """A tiny installed distribution (as pip leaves it in site-packages) declaring one workload entry point."""
    package = site / "team_algo"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "scale.py").write_text(TEAM_MODULE)
    info = site / "team_algo-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: team-algo\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[airbatch.workloads]\nteam_scale = team_algo.scale:ScaleWorkload\n")
    return site


@pytest.fixture
def private_registry(monkeypatch):
    """Registrations made by a test vanish with it."""
    registered_workloads()  # the package's own modules register once per process; keep them
    monkeypatch.setattr(workloads, "_REGISTRY", dict(workloads._REGISTRY))
    monkeypatch.setattr(workloads, "_ORIGINS", dict(workloads._ORIGINS))
    yield
    for name in [m for m in sys.modules if m.startswith(("team_algo", "batch_worker.workloads.dropped_in"))]:
        del sys.modules[name]


def test_a_module_dropped_into_the_package_is_found_without_a_list(tmp_path, monkeypatch, private_registry):
    folder = tmp_path / "more_workloads"
    folder.mkdir()
    (folder / "dropped_in.py").write_text(TEAM_MODULE.replace("class ScaleWorkload", "@register\nclass ScaleWorkload")
                                          .replace("import OutputColumn", "import register, OutputColumn")
                                          .replace('"team_scale"', '"dropped_in"'))
    monkeypatch.setattr(workloads, "__path__", [*workloads.__path__, str(folder)])
    assert "dropped_in" in registered_workloads()
    workload = get_workload("dropped_in")
    assert workload.name == "dropped_in" and type(workload).__module__ == "batch_worker.workloads.dropped_in"
    assert not hasattr(workloads, "_BUILTIN_MODULES")


def test_an_entry_point_of_an_installed_package_registers_a_workload(tmp_path, monkeypatch, private_registry):
    monkeypatch.syspath_prepend(str(team_distribution(tmp_path / "site")))
    listed = registered_workloads()
    assert BUILTIN <= set(listed)
    assert listed["team_scale"] == "entry point team_scale = team_algo.scale:ScaleWorkload of team-algo 0.1"
    assert "team_algo.scale" not in sys.modules  # listing does not import it
    workload = get_workload("team_scale")
    out = workload.run(pd.DataFrame({"unit_id": ["a"], "value": [1.5]}), workload.resolve_params({"factor": 3}))
    assert out.to_dict("list") == {"unit_id": ["a"], "scaled": [4.5]}


def test_an_entry_point_naming_another_workload_is_refused(tmp_path, monkeypatch, private_registry):
    site = team_distribution(tmp_path / "site")
    (site / "team_algo-0.1.dist-info" / "entry_points.txt").write_text(
        "[airbatch.workloads]\nteam_other = team_algo.scale:ScaleWorkload\n")
    monkeypatch.syspath_prepend(str(site))
    with pytest.raises(workloads.WorkloadError, match="the class's name is 'team_scale', not 'team_other'"):
        get_workload("team_other")


def test_an_unknown_workload_lists_what_is_registered_and_how_to_register(private_registry):
    with pytest.raises(UnknownWorkload) as err:
        get_workload("no_such_workload")
    text = str(err.value)
    assert text.startswith("unknown workload 'no_such_workload'; registered: gpu_benchmark (module ")
    assert "noop (module batch_worker.workloads.noop)" in text
    assert '[project.entry-points."airbatch.workloads"]' in text and "pip install" in text
    assert isinstance(err.value, KeyError) and isinstance(err.value, ValueError)


def worker_env(site: Path) -> dict[str, str]:
    return {"PATH": os.path.dirname(sys.executable) + ":/usr/bin:/bin", "PYTHONPATH": str(site)}


def test_a_worker_process_runs_an_entry_point_workload(tmp_path):
    site = team_distribution(tmp_path / "site")
    batch = tmp_path / "batch.parquet"
    pd.DataFrame({"unit_id": ["a", "b"], "value": [1.0, 2.5]}).to_parquet(batch, index=False)
    key = cache_key("content", "team_scale", "1", {"factor": 2.0})
    worklist = tmp_path / "worklist.json"
    worklist.write_text(json.dumps({
        "format": 1, "workload": "team_scale", "workload_version": "1", "params": {"factor": 2.0},
        "output_root": str(tmp_path / "out"), "batches_per_child": 1, "run": {},
        "items": [{"batch_id": 0, "uri": str(batch), "rows": 2, "units": 2, "content_hash": "content", "key": key}]}))
    for command in (["batch-worker", str(worklist)], [sys.executable, "-m", "batch_worker.runtime", str(worklist)]):
        done = subprocess.run(command, env=worker_env(site), capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        result = pq.read_table(tmp_path / "out" / key / RESULT_FILE)
        assert result.to_pydict() == {"unit_id": ["a", "b"], "scaled": [2.0, 5.0]}
        (tmp_path / "out" / key / "_DONE.json").unlink()


def test_workload_modules_import_no_heavy_library():
    code = textwrap.dedent("""
        import json, sys
        from batch_worker.workloads import get_workload, registered_workloads
        names = registered_workloads()
        declared = {n: [p.json_schema() for p in get_workload(n).parameters] for n in names}
        heavy = sorted(m for m in ("numpy", "pandas", "pyarrow", "scipy", "cupy") if m in sys.modules)
        print(json.dumps({"names": sorted(names), "heavy": heavy}))
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert BUILTIN <= set(found["names"])
    assert found["heavy"] == []


@pytest.mark.parametrize("name", sorted(BUILTIN))
def test_every_builtin_workload_declares_described_parameters_and_an_output(name):
    workload = get_workload(name)
    assert workload.parameters and workload.output is not None
    for parameter in workload.parameters:
        schema = parameter.json_schema()
        assert schema["description"] and schema["type"]
    assert workload.default_params == {p.name: p.default for p in workload.parameters}
    assert workload.resolve_params({}) == workload.default_params


# --- parameters -------------------------------------------------------------------------------

def test_a_parameter_gives_its_json_schema():
    ratio = Parameter("ratio", "number", 0.5, "a share", minimum=0, exclusive_maximum=1)
    assert ratio.json_schema() == {"type": "number", "description": "a share", "minimum": 0, "exclusiveMaximum": 1}
    label = Parameter("label", "string", None, "optional text", nullable=True, enum=("a", "b"))
    assert label.json_schema() == {"type": ["string", "null"], "description": "optional text",
                                   "enum": ["a", "b", None]}
    ids = Parameter("ids", "string_list", [], "unit ids")
    assert ids.json_schema() == {"type": "array", "description": "unit ids", "items": {"type": "string"}}


@pytest.mark.parametrize("parameter, value, problem", [
    (Parameter("n", "integer", 1, "count", minimum=1), 0, "n must be >= 1, got 0"),
    (Parameter("n", "integer", 1, "count"), 1.5, "n must be an integer, got 1.5"),
    (Parameter("n", "integer", 1, "count"), True, "n must be an integer, got True"),
    (Parameter("x", "number", 1.0, "x", exclusive_minimum=0), 0, "x must be > 0, got 0"),
    (Parameter("x", "number", 0.5, "x", exclusive_maximum=1), 1, "x must be < 1, got 1"),
    (Parameter("x", "number", 0.5, "x", maximum=1), 2.5, "x must be <= 1, got 2.5"),
    (Parameter("x", "number", 0.5, "x"), "a", "x must be a number, got 'a'"),
    (Parameter("x", "number", 0.5, "x"), None, "x is null: NaN or null is not a number; give a number"),
    (Parameter("d", "string", "cpu", "d"), None, "d must not be null (a string)"),
    (Parameter("d", "string", "cpu", "d", enum=("cpu", "gpu")), "tpu", "d must be one of ['cpu', 'gpu'], got 'tpu'"),
    (Parameter("b", "boolean", False, "b"), "yes", "b must be true or false, got 'yes'"),
    (Parameter("ids", "string_list", [], "ids"), ["a", 1], "ids must be a list of strings, got ['a', 1]"),
])
def test_a_parameter_names_itself_and_what_is_allowed(parameter, value, problem):
    assert parameter.problems(value) == [problem]


def test_a_parameter_without_description_or_with_a_bad_default_is_refused_at_declaration():
    with pytest.raises(ValueError, match="give it a description"):
        Parameter("n", "integer", 1, " ")
    with pytest.raises(ValueError, match="its default is not allowed: n must be >= 5, got 1"):
        Parameter("n", "integer", 1, "count", minimum=5)
    with pytest.raises(ValueError, match="unknown kind 'float'"):
        Parameter("n", "float", 1.0, "count")


def test_equal_numbers_resolve_to_one_form_and_so_to_one_cache_key():
    packaging = get_workload("packaging")
    as_int, as_float = packaging.resolve_params({"l2": 1}), packaging.resolve_params({"l2": 1.0})
    assert as_int == as_float and isinstance(as_int["l2"], float)
    assert cache_key("h", "packaging", "1", as_int) == cache_key("h", "packaging", "1", as_float)
    # an integer parameter reads 28.0 as 28, as the trigger form's JSON Schema does; a fraction is refused
    assert packaging.resolve_params({"holdout_days": 28.0})["holdout_days"] == 28
    assert type(packaging.resolve_params({"holdout_days": 28.0})["holdout_days"]) is int
    with pytest.raises(ValueError, match="holdout_days must be an integer, got 28.5"):
        packaging.resolve_params({"holdout_days": 28.5})
    assert Parameter("x", "number", 0.5, "x").canonical(True) is True  # a boolean is not a number


def test_resolve_params_reports_every_problem_at_once():
    with pytest.raises(ValueError) as err:
        get_workload("noop").resolve_params({"speed": 1, "sleep_s": -1, "fail_units": "u1"})
    assert str(err.value) == ("workload 'noop' parameters: unknown parameter(s) ['speed']; known: ['fail_units', "
                              "'salt', 'sleep_s']; sleep_s must be >= 0, got -1; fail_units must be a list of "
                              "strings, got 'u1'")


@pytest.mark.parametrize("params, message", [
    ({"min_price_ratio": 1.5, "max_price_ratio": 1.0}, "min_price_ratio (1.5) is above max_price_ratio (1.0)"),
    ({"min_price_ratio": 1.2, "max_change": 0.1}, "min_price_ratio (1.2) is above 1 + max_change (1.1)"),
    ({"min_price_ratio": 0.5, "max_price_ratio": 0.8}, "max_price_ratio (0.8) is below 1 - max_change (0.85)"),
])
def test_pricing_refuses_contradicting_fields_naming_both(params, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("+", r"\+")):
        get_workload("pricing").resolve_params(params)


# --- the output schema --------------------------------------------------------------------------

SCHEMA = OutputSchema((OutputColumn("unit_id", "string", nullable=False), OutputColumn("rows", "int"),
                       OutputColumn("score", "float"), OutputColumn("note", "string"), OutputColumn("ok", "bool")))


def test_enforce_orders_columns_and_casts_an_all_null_column_to_its_type():
    frame = pd.DataFrame({"score": [1, 2], "unit_id": ["a", "b"], "rows": [3, 4], "note": [None, None],
                          "ok": [None, None]})
    out = SCHEMA.enforce(frame, "test")
    assert list(out.columns) == ["unit_id", "rows", "score", "note", "ok"]
    assert str(out["note"].dtype) == "string" and str(out["ok"].dtype) == "boolean"
    assert str(out["score"].dtype) == "float64"
    import pyarrow as pa

    table = pa.Table.from_pandas(out, schema=SCHEMA.arrow_schema(), preserve_index=False)
    assert table.schema.field("note").type == pa.large_string() and table.column("note").null_count == 2


@pytest.mark.parametrize("frame, message", [
    (pd.DataFrame({"unit_id": ["a"], "rows": ["3"], "score": [1.0], "note": ["x"], "ok": [True]}),
     "where: output column 'rows' is declared int but is str"),
    (pd.DataFrame({"unit_id": ["a"], "rows": [3], "score": ["high"], "note": ["x"], "ok": [True]}),
     "output column 'score' is declared float but is"),
    (pd.DataFrame({"unit_id": [None, "a"], "rows": [3, 4], "score": [1.0, 2.0], "note": ["x", "y"], "ok": [True, False]}),
     "output column 'unit_id' is declared not nullable but holds 1 null value(s)"),
    (pd.DataFrame({"unit_id": ["a"], "rows": [3], "score": [1.0], "ok": [True], "extra": [1]}),
     "missing ['note']; not declared ['extra']"),
])
def test_enforce_names_the_column_and_both_types(frame, message):
    with pytest.raises(OutputSchemaError) as err:
        SCHEMA.enforce(frame, "where")
    assert message in str(err.value)


EVERY_TYPE = OutputSchema((OutputColumn("s", "string"), OutputColumn("i", "int"), OutputColumn("f", "float"),
                           OutputColumn("b", "bool"), OutputColumn("d", "date"), OutputColumn("t", "timestamp"),
                           OutputColumn("key", "string", nullable=False), OutputColumn("n", "int", nullable=False),
                           OutputColumn("yes", "bool", nullable=False)))


def test_enforce_gives_an_empty_output_every_declared_type():
    out = EVERY_TYPE.enforce(pd.DataFrame({name: [] for name in reversed(EVERY_TYPE.names)}), "test")
    assert list(out.columns) == list(EVERY_TYPE.names) and len(out) == 0
    assert {name: str(dtype) for name, dtype in out.dtypes.items()} == {
        "s": "string", "i": "Int64", "f": "float64", "b": "boolean", "d": "datetime64[s]",
        "t": "datetime64[us, UTC]", "key": "string", "n": "int64", "yes": "bool"}


def test_enforce_keeps_columns_of_their_type_and_converts_only_floats_and_timestamps():
    import datetime

    index = pd.Index([7, 7, 3], name="unit")  # a repeated, named index: the output gets a fresh one
    frame = pd.DataFrame({
        "yes": [True, False, True], "n": pd.array([1, 2, 3], dtype="int32"),
        "key": pd.array(["a", "b", "c"], dtype="str"), "s": pd.Series(["x", None, "z"], dtype=object, index=index),
        "i": pd.array([1, None, 3], dtype="Int64"), "f": pd.array([1, 2, 3], dtype="int32"),
        "b": pd.array([True, None, False], dtype="boolean"),
        "d": [datetime.date(2026, 1, 1), None, datetime.date(2026, 1, 3)],
        "t": pd.to_datetime(["2026-01-01 10:00", "2026-01-02 10:00", None]).tz_localize("Europe/Paris"),
    }, index=index)
    before = frame.copy()
    out = EVERY_TYPE.enforce(frame, "test")
    assert list(out.columns) == list(EVERY_TYPE.names)
    assert out.index.equals(pd.RangeIndex(3))
    assert {name: str(dtype) for name, dtype in out.dtypes.items()} == {
        "s": "object", "i": "Int64", "f": "float64", "b": "boolean", "d": "object", "t": "datetime64[us, UTC]",
        "key": "str", "n": "int32", "yes": "bool"}
    assert out["f"].tolist() == [1.0, 2.0, 3.0]
    assert out["t"].iloc[0] == pd.Timestamp("2026-01-01 09:00", tz="UTC") and pd.isna(out["t"].iloc[2])
    out.loc[0, "key"] = "changed"
    out.loc[0, "n"] = 99
    pd.testing.assert_frame_equal(frame, before)  # the workload's own frame is untouched


def test_enforce_refuses_a_non_nullable_column_that_is_all_null():
    schema = OutputSchema((OutputColumn("key", "string", nullable=False), OutputColumn("n", "int", nullable=False)))
    with pytest.raises(OutputSchemaError, match=r"^where: output column 'key' is declared not nullable but holds 2 "
                                                r"null value\(s\)$"):
        schema.enforce(pd.DataFrame({"key": [None, None], "n": [1, 2]}), "where")
    with pytest.raises(OutputSchemaError, match=r"output column 'n' is declared not nullable but holds 1 null"):
        schema.enforce(pd.DataFrame({"key": ["a"], "n": [float("nan")]}), "where")


@pytest.mark.parametrize("frame, message", [
    (pd.DataFrame({"unit_id": pd.Series([None, 4], dtype=object), "rows": [3, 4], "score": [1.0, 2.0],
                   "note": ["x", "y"], "ok": [True, False]}, index=[0, 1]).iloc[1:],
     "where: output column 'unit_id' is declared string but is object holding int; make the workload return "
     "string values or change its `output` (and bump its version)"),
    (pd.DataFrame({"unit_id": ["a"], "rows": [True], "score": [1.0], "note": ["x"], "ok": [True]}),
     "where: output column 'rows' is declared int but is bool"),
    (pd.DataFrame({"unit_id": ["a"], "rows": [1], "score": [1.0], "note": ["x"], "ok": [1]}),
     "where: output column 'ok' is declared bool but is int64"),
    (pd.DataFrame([["a", 1, 1.0, "x", True, 2]], columns=["unit_id", "rows", "score", "note", "ok", "rows"]),
     "where: the output has column(s) ['rows'] more than once; return each declared column once"),
    (pd.DataFrame({"rows": [1], "score": [1.0], "note": ["x"], "ok": [True]}),
     "where: the output does not have the declared columns: missing ['unit_id']; declared: ['unit_id', 'rows', "
     "'score', 'note', 'ok']"),
])
def test_enforce_errors_name_the_column_and_what_to_do(frame, message):
    with pytest.raises(OutputSchemaError) as err:
        SCHEMA.enforce(frame, "where")
    assert str(err.value).startswith(message)


def test_enforce_output_round_trips_through_the_result_file(tmp_path):
    from batch_worker.runtime import parquet_bytes

    frame = pd.DataFrame({"ok": pd.array([True, None], dtype="boolean"), "note": [None, None], "score": [1, 2],
                          "rows": pd.array([3, None], dtype="Int64"), "unit_id": ["a", "b"]})
    out = SCHEMA.enforce(frame, "test")
    path = tmp_path / RESULT_FILE
    path.write_bytes(parquet_bytes(out, SCHEMA.arrow_schema()))
    pd.testing.assert_frame_equal(pd.read_parquet(path), out)
