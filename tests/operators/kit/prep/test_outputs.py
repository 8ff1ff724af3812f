"""Tests of operators.kit.prep.outputs: what a prepare leaves under out_uri and returns."""
from __future__ import annotations

import json
import os

from operators.kit.prep import prepare
from tests.operators.kit.prep.samples import SCHEMA, batches, sales, spoiled_csv


def test_a_rerun_replaces_the_earlier_outputs(tmp_path):
    frame, _ = spoiled_csv(tmp_path / "in.csv")
    out = tmp_path / "out"
    prepare(str(tmp_path / "in.csv"), SCHEMA, str(out), 64)
    sales().to_csv(tmp_path / "clean.csv", index=False)
    result = prepare(str(tmp_path / "clean.csv"), SCHEMA, str(out), 4)
    assert result.quarantine_uri is None and not (out / "quarantine.parquet").exists()
    assert len(os.listdir(out / "batches")) == result.batches <= 4
    assert len(batches(result)) == len(sales())


def test_to_dict_is_small_and_json_serialisable(tmp_path):
    spoiled_csv(tmp_path / "in.csv")
    result = prepare(str(tmp_path / "in.csv"), SCHEMA, str(tmp_path / "out"), 8)
    assert json.loads(json.dumps(result.to_dict())) == result.to_dict()
    assert result.to_dict()["quarantined_by_reason"]["duplicate"] == 2
