"""Every DAG file imports cleanly, fast, without side effects, with the house conventions."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from airflow.dag_processing.dagbag import DagBag

REPO = Path(__file__).resolve().parents[2]
DAG_FILES = sorted((REPO / "dags").glob("*.py"))
HEAVY = {"pandas", "duckdb", "cupy", "numpy", "boto3", "pyarrow", "scipy"}


@pytest.fixture(scope="module")
def bag():
    return DagBag(dag_folder=str(REPO / "dags"))


def test_no_import_errors(bag):
    assert bag.import_errors == {}
    assert {p.stem for p in DAG_FILES} == set(bag.dag_ids)  # one DAG per file, file name = dag_id


@pytest.mark.parametrize("path", DAG_FILES, ids=lambda p: p.stem)
def test_top_level_is_wiring_only(path):
    tree = ast.parse(path.read_text())
    top_imports = {alias.name.split(".")[0] for node in tree.body if isinstance(node, ast.Import) for alias in node.names}
    top_imports |= {node.module.split(".")[0] for node in tree.body if isinstance(node, ast.ImportFrom) and node.module}
    assert not top_imports & HEAVY, f"heavy imports at parse time: {top_imports & HEAVY}"
    source = path.read_text()
    assert "Variable.get(" not in source and "now()" not in source


@pytest.mark.parametrize("path", DAG_FILES, ids=lambda p: p.stem)
def test_parses_quickly_in_a_fresh_interpreter(path):
    code = f"import time, runpy; t = time.perf_counter(); runpy.run_path({str(path)!r}); print(time.perf_counter() - t)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert float(out.stdout.strip().splitlines()[-1]) < 5.0


def test_dags_document_themselves_and_have_fixed_start_dates(bag):
    for dag_id, dag in bag.dags.items():
        assert dag.doc_md and len(dag.doc_md) > 100, dag_id
        assert dag.start_date is not None and dag.start_date.tzinfo is not None, dag_id
        assert dag.tags, dag_id
