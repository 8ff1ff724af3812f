"""Every DAG file imports cleanly, lightly, without side effects, with the house conventions."""
from __future__ import annotations

import ast
import json
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


# What a DAG file may not load or do while it is parsed, checked in a fresh interpreter: the
# dag-processor parses every file every few seconds, so cost comes from imports and I/O, and those
# are what is counted (parse timings live in benchmarks, not in assertions).
PARSE_PROBE = """
import json, runpy, socket, sys
import botocore.client

events = []
def refuse_client(self, service_name, *args, **kwargs):
    events.append("boto3 client " + service_name)
    raise RuntimeError("no AWS client at parse time")
def refuse_connect(self, address, *args, **kwargs):
    events.append("connect " + repr(address))
    raise OSError("no network at parse time")
botocore.client.ClientCreator.create_client = refuse_client
socket.socket.connect = refuse_connect
socket.socket.connect_ex = refuse_connect
runpy.run_path(sys.argv[1])
print(json.dumps({"modules": sorted(sys.modules), "events": events}))
"""
# boto3 itself comes with the provider's BatchOperator; creating a client is what the probe refuses.
PARSE_TIME_FORBIDDEN = (HEAVY - {"boto3"}) | {"matplotlib", "s3fs", "aiobotocore", "moto", "sklearn", "torch"}


@pytest.mark.slow
@pytest.mark.parametrize("path", DAG_FILES, ids=lambda p: p.stem)
def test_parsing_in_a_fresh_interpreter_loads_no_heavy_module_and_touches_no_network(path):
    out = subprocess.run([sys.executable, "-c", PARSE_PROBE, str(path)], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    loaded = {name.split(".")[0] for name in seen["modules"]} & PARSE_TIME_FORBIDDEN
    assert not loaded, f"{path.name} imports {sorted(loaded)} at parse time: import them inside the task that uses them"
    assert seen["events"] == [], f"{path.name} creates AWS clients or opens connections at parse time: {seen['events']}"


def test_dags_document_themselves_and_have_fixed_start_dates(bag):
    for dag_id, dag in bag.dags.items():
        assert dag.doc_md and len(dag.doc_md) > 100, dag_id
        assert dag.start_date is not None and dag.start_date.tzinfo is not None, dag_id
        assert dag.tags, dag_id


def test_scheduled_dags_start_paused_and_unscheduled_ones_run_when_triggered(bag):
    # A new stack ran the latest pricing week on its full default, daily and monthly inference and weeks of
    # training catch-up before anyone asked; a trigger of an unscheduled DAG must still run at once.
    scheduled = {dag_id for dag_id, dag in bag.dags.items() if dag.timetable.can_be_scheduled}
    assert scheduled == {"pricing_optimization", "packaging_training", "packaging_inference_daily",
                         "packaging_inference_monthly"}
    for dag_id, dag in bag.dags.items():
        assert bool(dag.is_paused_upon_creation) == (dag_id in scheduled), dag_id


@pytest.mark.slow
def test_the_gpu_benchmark_form_runs_the_small_suite_by_default_on_the_local_endpoint():
    def default_small(env_type: str) -> bool:
        code = ("import json, sys; from airflow.dag_processing.dagbag import DagBag; "
                "bag = DagBag(dag_folder=sys.argv[1]); "
                "print(json.dumps(bag.dags['gpu_batch_benchmark'].params['small']))")
        out = subprocess.run([sys.executable, "-c", code, str(REPO / "dags" / "gpu_batch_benchmark.py")],
                             capture_output=True, text=True, timeout=300, env={**__import__("os").environ,
                                                                              "BATCH_ENV_TYPE": env_type})
        assert out.returncode == 0, out.stderr[-2000:]
        return json.loads(out.stdout.strip().splitlines()[-1])

    assert default_small("UNMANAGED") is True  # the local endpoint: this machine's CPU is its "GPU"
    assert default_small("MANAGED") is False  # AWS: the whole suite
