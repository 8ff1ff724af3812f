"""The author's API reads on its own: unit_pipeline's signature and docstring, operators.kit's names, the shapes.

An author imports every name from `operators.kit` (docs/new-pipeline.md); these tests keep the
signature, its docstring, the package's `__all__` and the stage shapes in step with the code.
"""
from __future__ import annotations

import ast
import dataclasses
import inspect
import json
import re
import subprocess
import sys
from pathlib import Path

import pendulum
import pytest

import operators.kit
from operators.kit import unit_pipeline
from operators.kit.pipeline import PipelineOptions, UnitPipeline

REPO = Path(__file__).resolve().parents[3]
START = pendulum.datetime(2026, 1, 1, tz="UTC")
OPTIONS = [name for name, p in inspect.signature(unit_pipeline).parameters.items() if p.kind is p.KEYWORD_ONLY]


def documented_options() -> dict[str, list[str]]:
    """Each entry of the docstring's `Options:` section: its name (`**dag_kwargs` for the DAG's arguments) and its
    lines."""
    doc = inspect.getdoc(unit_pipeline)
    section = doc.split("\nOptions:\n", 1)[1].split("\n\n", 1)[0]
    entries: dict[str, list[str]] = {}
    for line in section.splitlines():
        entry = re.match(r"^    (\*\*)?(\w+): (\S.*)$", line)
        if entry:
            entries[(entry[1] or "") + entry[2]] = [entry[3]]
        else:
            entries[list(entries)[-1]].append(line)
    return entries


def test_unit_pipeline_takes_every_option_by_keyword_with_its_type_and_default():
    parameters = inspect.signature(unit_pipeline).parameters
    assert list(parameters)[0] == "dag_id" and parameters["dag_id"].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
    assert OPTIONS == ["workload", "evaluator", "model", "source", "publish", "notify", "poll_interval", "defaults",
                       "extra_params"]
    assert all(parameters[name].annotation is not inspect.Parameter.empty for name in OPTIONS)
    assert parameters["workload"].default is inspect.Parameter.empty  # the one required option
    assert parameters["poll_interval"].default == 2
    assert parameters["dag_kwargs"].kind is inspect.Parameter.VAR_KEYWORD  # Airflow's DAG arguments


def test_the_docstring_gives_every_option_one_line():
    entries = documented_options()
    assert list(entries) == [*OPTIONS, "**dag_kwargs"]
    for name, lines in entries.items():
        assert len(lines) == 1 and len(lines[0]) > 20, (name, lines)
    assert entries["poll_interval"][0].startswith("seconds")


def test_unit_pipeline_holds_the_defaults_and_unit_pipeline_s_options_are_pipeline_options_fields():
    assert [field.name for field in dataclasses.fields(PipelineOptions)] == [*OPTIONS, "dag_kwargs"]
    assert all(field.default is dataclasses.MISSING for field in dataclasses.fields(PipelineOptions))
    pipeline = UnitPipeline("probe", workload="noop", start_date=START, tags=["test"])
    defaults = {name: p.default for name, p in inspect.signature(unit_pipeline).parameters.items()
                if name in OPTIONS and p.default is not inspect.Parameter.empty}
    assert {name: getattr(pipeline.options, name) for name in defaults} == defaults
    assert pipeline.options.dag_kwargs == {"start_date": START, "tags": ["test"]}
    assert pipeline.poll_interval == 2 and pipeline.model == "noop" and pipeline.evaluator is None


@pytest.mark.parametrize("build", [unit_pipeline, UnitPipeline], ids=["unit_pipeline", "UnitPipeline"])
@pytest.mark.parametrize("given, closest", [
    ({"evaluater": None}, "'evaluator' for 'evaluater'"),
    ({"poll_intervall": 5}, "'poll_interval' for 'poll_intervall'"),
    ({"schedul": None}, "'schedule' for 'schedul'"),  # an argument of Airflow's DAG
    ({"defaults": {}, "extra_param": {}}, "'extra_params' for 'extra_param'"),
])
def test_an_unknown_option_is_refused_naming_the_closest(build, given, closest):
    with pytest.raises(TypeError) as refused:
        build("probe", workload="noop", start_date=START, **given)
    message = str(refused.value)
    assert message.startswith("probe: unit_pipeline has no option") and f"did you mean {closest}?" in message
    assert "its options are workload, evaluator, model" in message


def test_params_and_default_args_are_refused_saying_what_to_give_instead():
    with pytest.raises(TypeError, match="takes no params=: the params are generated .* defaults= .* extra_params="):
        unit_pipeline("probe", workload="noop", start_date=START, params={})
    with pytest.raises(TypeError, match="takes no default_args=: the pipeline sets them"):
        unit_pipeline("probe", workload="noop", start_date=START, default_args={"retries": 2})


def test_every_name_of_operators_kit_imports_from_a_fresh_interpreter_and_importing_the_package_loads_none():
    probe = ("import json, sys\n"
             "import operators.kit\n"
             "before = sorted(m for m in sys.modules if m.startswith('operators.kit.'))\n"
             "from operators.kit import *\n"
             "missing = [n for n in operators.kit.__all__ if n not in globals()]\n"
             "print(json.dumps({'before': before, 'missing': missing}))\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert out.returncode == 0, out.stderr[-3000:]
    found = json.loads(out.stdout.splitlines()[-1])
    assert found == {"before": [], "missing": []}


def test_operators_kit_declares_each_name_once_for_python_and_once_for_type_checkers():
    """`_HOMES` (what `__getattr__` imports) and the `TYPE_CHECKING` imports name the same names from the same
    modules, and each name is what its module defines."""
    tree = ast.parse(Path(operators.kit.__file__).read_text())
    [checking] = [node for node in tree.body if isinstance(node, ast.If) and getattr(node.test, "id", None)
                  == "TYPE_CHECKING"]
    imported = {alias.name: node.module for node in checking.body if isinstance(node, ast.ImportFrom)
                and node.module.startswith("operators.kit") for alias in node.names}
    assert imported == operators.kit._HOME_OF
    assert len(operators.kit.__all__) == len(set(operators.kit.__all__)) == len(imported)
    for name in operators.kit.__all__:
        assert getattr(operators.kit, name) is getattr(sys.modules[operators.kit._HOME_OF[name]], name)
    assert "engine" not in operators.kit.__all__
    from operators.kit import engine  # a submodule still imports as one

    assert engine.__name__ == "operators.kit.engine"


def test_the_shapes_name_every_key_their_stage_returns():
    """`Prepared` holds every field of prep's `PrepResult`; `Fanout` every key of `engine.combine`'s total."""
    from operators.kit import Fanout, Prepared, ShardSummary
    from operators.kit.engine import combine
    from operators.kit.prep import PrepResult

    assert {field.name for field in dataclasses.fields(PrepResult)} <= set(Prepared.__annotations__)
    shard = {key: 0 for key in ShardSummary.__annotations__}
    shard.update(failures_by_class={}, first_errors={}, failed_batches=[], job_ids=[], results="r.json",
                 compute_s_per_batch=None)
    assert set(combine([shard], run_dir=None)) | {"rows_in", "rows_quarantined", "quarantined_by_reason", "cost",
                                                  "note"} == Fanout.__required_keys__
    assert Fanout.__optional_keys__ == {"alarms"} and Prepared.__optional_keys__ == {"input_stats"}


BLOCK = re.compile(r"^```python file=(?P<path>\S+)\n(?P<body>.*?)^```$", re.M | re.S)


def imports_of(code: str) -> list[tuple[str, list[str]]]:
    return [(node.module, [alias.name for alias in node.names]) for node in ast.walk(ast.parse(code))
            if isinstance(node, ast.ImportFrom) and node.module]


def test_the_new_pipeline_page_imports_the_kit_only_from_operators_kit_and_the_workload_from_the_worker():
    files = {m["path"]: m["body"] for m in BLOCK.finditer((REPO / "docs" / "new-pipeline.md").read_text())}
    assert "store_forecast/workload.py" in files and "dags/store_forecast.py" in files
    for path, code in files.items():
        for module, names in imports_of(code):
            if module.startswith("operators"):
                assert module == "operators.kit" and set(names) <= set(operators.kit.__all__), (path, module, names)
    workload = {module for module, _ in imports_of(files["store_forecast/workload.py"])}
    assert workload == {"__future__", "typing", "batch_worker.schema", "batch_worker.workloads"}


def test_the_project_s_pipelines_import_the_author_s_names_from_operators_kit():
    """An author-level name is never imported from the module that defines it in dags/ or operators/pipelines/."""
    sources = [*REPO.glob("dags/*.py"), *REPO.glob("operators/pipelines/**/*.py")]
    found = [(str(path.relative_to(REPO)), module, name) for path in sources
             for module, names in imports_of(path.read_text()) if module.startswith("operators.kit.")
             for name in names if name in operators.kit.__all__]
    assert found == []
