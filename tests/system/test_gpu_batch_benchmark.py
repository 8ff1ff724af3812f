"""The GPU benchmark DAG on this machine (no CUDA): CPU rows measured and checked, GPU rows marked absent."""
from __future__ import annotations

import csv
import json

import pytest

from airflow.utils.state import DagRunState

from tests.system.test_batch_smoke import load_dag
from tests.system.test_units_of_work import task_instances, xcom

pytestmark = pytest.mark.system


def test_small_suite_runs_on_both_queues_and_reports_gpu_rows_as_absent(airflow_db, local_aws, data_root):
    run = load_dag("gpu_batch_benchmark").test(run_conf={"small": True, "repeats": 1})
    assert run.state == DagRunState.SUCCESS
    assert sorted(ti.rendered_map_index for ti in task_instances(run, "run_cases")) == ["cpu: 14 cases",
                                                                                        "gpu: 14 cases"]
    [result] = xcom(run, "compare")
    assert result["gpu_device"] == "gpu: none visible" and result["suite_speedup"] is None
    assert set(result["statuses"]) == {"no CUDA device"}
    with open(result["files"]["comparison.csv"]) as handle:
        table = list(csv.DictReader(handle))
    assert len(table) == 14 and all(row["gpu_s"] == "" for row in table)
    assert all(float(row["cpu_s"]) > 0 for row in table if "tf32" not in row["case"])
    with open(result["files"]["rows.csv"]) as handle:
        rows = list(csv.DictReader(handle))
    cpu = [r for r in rows if r["device"] != "gpu: none visible"]
    fp32 = [r for r in cpu if r["precision"] == "fp32"]
    assert len(cpu) == 14 and len(fp32) == 10
    assert all(r["status"] == "ok" and r["verified"] == "True" for r in fp32)  # checked against float64
    assert all(r["status"].startswith("not applicable") for r in cpu if r["precision"] == "tf32")
    with open(result["files"]["comparison.png"], "rb") as handle:
        assert handle.read(8) == b"\x89PNG\r\n\x1a\n"
    [message] = [json.loads(p.read_text()) for p in (data_root / "outbox").glob("*.json")]
    assert "suite speedup n/a (no CUDA device)" in message["subject"]
    assert "matmul_f32_n1000" in message["body"]
