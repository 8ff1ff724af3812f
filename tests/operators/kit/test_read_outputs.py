"""Collection reads every batch's output with the workload's declared types, and names a file it cannot read."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from batch_worker import runtime, workloads
from batch_worker.cache import RESULT_FILE, cache_key
from batch_worker.schema import Column, InputSchema
from batch_worker.workloads import OutputColumn, OutputSchema, Workload, register
from operators.kit import engine


class NotedWorkload(Workload):
    """A note per unit, null for every unit whose value is below 10: some batches have only nulls."""

    name = "noted"
    version = "1"
    schema = InputSchema(columns=(Column("unit_id", "string"), Column("value", "float")), unit_key=("unit_id",))
    output = OutputSchema((OutputColumn("unit_id", "string", nullable=False), OutputColumn("note", "string")))

    def run(self, batch, params):
        notes = [f"big {v}" if v >= 10 else None for v in batch["value"]]
        return pd.DataFrame({"unit_id": batch["unit_id"], "note": pd.Series(notes, dtype=object)})


@pytest.fixture
def noted(monkeypatch):
    workloads.registered_workloads()
    monkeypatch.setattr(workloads, "_REGISTRY", dict(workloads._REGISTRY))
    monkeypatch.setattr(workloads, "_ORIGINS", dict(workloads._ORIGINS))
    return register(NotedWorkload)


def run_batches(tmp_path: Path, values_per_batch: list[list[float]]) -> list[str]:
    items = []
    for batch_id, values in enumerate(values_per_batch):
        path = tmp_path / "batches" / f"{batch_id}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame({"unit_id": [f"u{batch_id}-{i}" for i in range(len(values))], "value": values}).to_parquet(path)
        items.append({"batch_id": batch_id, "uri": str(path), "rows": len(values), "units": len(values),
                      "content_hash": f"c{batch_id}", "key": cache_key(f"c{batch_id}", "noted", "1", {})})
    worklist = tmp_path / "worklist.json"
    worklist.write_text(json.dumps({"format": 1, "workload": "noted", "workload_version": "1", "params": {},
                                    "output_root": str(tmp_path / "out"), "batches_per_child": len(items),
                                    "items": items}))
    assert runtime.run(str(worklist), 0) == runtime.EXIT_OK
    return [str(tmp_path / "out" / item["key"] / RESULT_FILE) for item in items]


def test_a_batch_whose_column_is_all_null_collects_with_the_others(tmp_path, noted):
    uris = run_batches(tmp_path, [[1.0, 2.0], [5.0, 20.0], [3.0]])  # batches 0 and 2: only null notes
    table = engine.read_outputs(uris, aws_conn_id=None, schema=noted.output.arrow_schema())
    assert table["unit_id"].tolist() == ["u0-0", "u0-1", "u1-0", "u1-1", "u2-0"]
    assert table["note"].isna().tolist() == [True, True, True, False, True] and table["note"].iloc[3] == "big 20.0"


def test_no_output_gives_the_declared_columns(noted):
    empty = engine.read_outputs([], aws_conn_id=None, schema=noted.output.arrow_schema())
    assert list(empty.columns) == ["unit_id", "note"] and empty.empty


def test_outputs_of_different_types_name_the_file_and_the_column(tmp_path):
    first, second = tmp_path / "a.parquet", tmp_path / "b.parquet"
    # what a workload without an output schema writes when one batch's notes are all null
    pd.DataFrame({"unit_id": ["a"], "note": pd.Series([None], dtype=object)}).to_parquet(first)
    pd.DataFrame({"unit_id": ["b"], "note": ["text"]}).to_parquet(second)
    with pytest.raises(ValueError) as err:
        engine.read_outputs([str(first), str(second)], aws_conn_id=None)
    assert str(err.value).startswith(f"cannot read batch output {second}: ")
    assert f"note is large_string there, null in {first}" in str(err.value)


def test_a_run_reads_its_outputs_with_its_workload_schema(tmp_path, noted):
    uris = run_batches(tmp_path, [[1.0], [20.0]])
    batches = [{"batch_id": 2, "output": None}, {"batch_id": 1, "output": uris[1]}, {"batch_id": 0, "output": uris[0]}]
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"shard": {"workload": "noted"}, "batches": batches, "failed": []}))
    table = engine.read_run_outputs([str(results)], aws_conn_id=None)
    assert table["unit_id"].tolist() == ["u0-0", "u1-0"] and table["note"].tolist()[1] == "big 20.0"
    assert str(table["note"].dtype) in ("str", "string")
