"""Every module of the project has a test module whose path mirrors its own, or a line in UNMIRRORED saying why not.

The mirror, as the tree has it:

    operators/kit/cost.py                           tests/operators/kit/test_cost.py
    operators/kit/prep/sql.py                       tests/operators/kit/prep/test_sql.py
    operators/pipelines/sweep/outcome.py            tests/operators/pipelines/sweep/test_outcome.py
    localaws/guard.py, plugins/airbatch_runs.py     tests/localaws/test_guard.py, tests/plugins/test_airbatch_runs.py
    images/worker/batch_worker/runtime.py           tests/images/test_runtime.py       (the worker's tests are flat,
    images/worker/batch_worker/workloads/sweep.py   tests/images/test_sweep.py          workloads/ included)
    a package's __init__.py and __main__.py         test_<package>.py beside the package's other tests
                                                    (localdb/ -> tests/localdb/test_localdb.py)

A module with no code of its own (a docstring, imports, `__all__`) needs none. More test modules than one per module
are fine (test_registry_concurrency.py beside test_registry.py); the mirror is the one a reader looks for first.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: The folders whose modules need their mirror, searched recursively.
SOURCES = ("operators/kit", "operators/pipelines", "localaws", "localdb", "plugins", "images/worker/batch_worker")
WORKER = Path("images/worker/batch_worker")
WORKER_TESTS = Path("tests/images")

#: Modules without a mirror of their own, each with where it is tested instead (a tests/ path named here must exist).
UNMIRRORED = {
    "operators/kit/__init__.py": "the author's import surface: tests/operators/kit/test_author_api.py",
    "operators/kit/batch_resources.py": "load_spec, one JSON read; the spec: tests/operators/kit/test_provisioning.py",
    "operators/kit/delivery.py": "outbox, SNS and SMTP, sent through notify in tests/operators/kit/test_notify.py",
    "operators/kit/report.py": "the report page, rendered in tests/operators/kit/test_evaluation.py",
    "operators/kit/shapes.py": "TypedDicts only; held to the stages' returns in tests/operators/kit/test_author_api.py",
    "operators/pipelines/gpu/gpu_benchmark.py": "the GPU DAG's stages: tests/system/test_gpu_batch_benchmark.py",
    "operators/pipelines/noop/noop_data.py": "the no-op input generator, used by tests/operators/kit/test_engine.py",
    "operators/pipelines/noop/source.py": "units_of_work's input, run by tests/system/test_units_of_work.py",
    "operators/pipelines/pricing/report.py": "pricing's plots: tests/operators/pipelines/pricing/test_evaluation.py",
    "operators/pipelines/pricing/source.py": "the pricing DAG's input, target: tests/system/test_pricing_pipeline.py",
    "localaws/__main__.py": "`python -m localaws serve`, started by tests/localaws/test_guard.py and test_batch.py",
    "localaws/credentials.py": "the endpoint's key pairs and their file: tests/localaws/test_guard.py",
    "localaws/repo.py": "one constant, the repository's path",
    "localaws/server.py": "LocalAWS, the endpoint of every local_aws test; its start: tests/localaws/test_guard.py",
    "images/worker/batch_worker/gpu_rows.py": "the GPU benchmark's declared rows: tests/images/test_gpu_cases.py",
    "images/worker/batch_worker/output.py": "output checks and group splitting, run by tests/images/test_runtime.py",
    "images/worker/batch_worker/schema.py": "the input schema prep holds data to: tests/operators/kit/prep/test_sql.py",
    "images/worker/batch_worker/storage.py": "Location, under every read and write: tests/images/test_runtime.py",
    "images/worker/batch_worker/workloads/noop.py": "the engine's test load: tests/images/test_runtime.py",
}


def mirror(module: Path) -> Path:
    """The test module whose path mirrors `module` (a path relative to the repository)."""
    name = module.parent.name if module.stem in ("__init__", "__main__") else module.stem
    if module.is_relative_to(WORKER):
        return WORKER_TESTS / f"test_{name}.py"
    return Path("tests", *module.parent.parts, f"test_{name}.py")


def has_code(source: str) -> bool:
    """Whether a module holds more than a docstring, imports and `__all__`."""
    for index, statement in enumerate(ast.parse(source).body):
        if index == 0 and isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant):
            continue
        if isinstance(statement, (ast.Import, ast.ImportFrom)):
            continue
        if isinstance(statement, ast.Assign) and [getattr(t, "id", None) for t in statement.targets] == ["__all__"]:
            continue
        return True
    return False


def modules() -> list[Path]:
    return sorted(path.relative_to(REPO) for folder in SOURCES for path in (REPO / folder).rglob("*.py")
                  if "__pycache__" not in path.parts and has_code(path.read_text()))


def test_every_module_has_its_mirrored_test_module_or_a_reason():
    missing = [f"{module} -> {mirror(module)}" for module in modules()
               if not (REPO / mirror(module)).exists() and str(module) not in UNMIRRORED]
    assert not missing, ("write the test module, or move the module's tests there, or add the module to UNMIRRORED "
                         "in tests/test_test_layout.py with where it is tested:\n" + "\n".join(missing))


def test_each_reason_is_for_a_module_without_a_mirror_and_names_test_modules_that_exist():
    problems = []
    for module, reason in UNMIRRORED.items():
        path = Path(module)
        if not (REPO / path).exists():
            problems.append(f"{module}: no such module; remove it from UNMIRRORED")
        elif (REPO / mirror(path)).exists():
            problems.append(f"{module}: {mirror(path)} exists now; remove it from UNMIRRORED")
        problems += [f"{module}: the reason names {named}, which does not exist"
                     for named in re.findall(r"tests/[\w/]+\.py", reason) if not (REPO / named).exists()]
    assert not problems, "\n".join(problems)


def test_the_mirror_follows_the_trees_conventions():
    assert mirror(Path("operators/kit/cost.py")) == Path("tests/operators/kit/test_cost.py")
    assert mirror(Path("operators/kit/prep/sql.py")) == Path("tests/operators/kit/prep/test_sql.py")
    assert mirror(Path("operators/pipelines/sweep/spec.py")) == Path("tests/operators/pipelines/sweep/test_spec.py")
    assert mirror(Path("plugins/airbatch_runs.py")) == Path("tests/plugins/test_airbatch_runs.py")
    assert mirror(Path("localdb/__main__.py")) == Path("tests/localdb/test_localdb.py")
    assert mirror(Path("localdb/__init__.py")) == Path("tests/localdb/test_localdb.py")
    assert mirror(Path("images/worker/batch_worker/runtime.py")) == Path("tests/images/test_runtime.py")
    assert mirror(Path("images/worker/batch_worker/workloads/pricing.py")) == Path("tests/images/test_pricing.py")
    assert mirror(Path("images/worker/batch_worker/workloads/__init__.py")) == Path("tests/images/test_workloads.py")


def test_a_module_of_imports_and_all_alone_needs_no_test_module():
    assert not has_code('"""A package."""\nfrom a import b\n\n__all__ = ["b"]\n')
    assert not has_code("")
    assert has_code('"""A module."""\nLIMIT = 3\n')
    assert has_code("def f():\n    return 1\n")
