"""The sweep workload trains each configuration of a batch on the data slice and reports a row per configuration."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from batch_worker.runtime import parquet_bytes
from batch_worker.workloads import get_workload
from batch_worker.workloads.sweep import NO_FIT, trivial_score


def labels(weeks: int = 6) -> pd.DataFrame:
    from operators.pipelines.packaging import packaging_data

    return pd.concat([packaging_data.week_labels(w, groups=2, products_per_group=20, labels_per_week=1500,
                                                 start_date="2026-01-05", seed=1) for w in range(weeks)],
                     ignore_index=True)


def batch(*configs: tuple[str, dict]) -> pd.DataFrame:
    return pd.DataFrame({"config_id": [c for c, _ in configs], "config_key": [f"k-{c}" for c, _ in configs],
                         "hyperparameters": [json.dumps(h) for _, h in configs]})


def test_each_configuration_trains_on_the_slice_and_a_no_fit_is_a_row(tmp_path):
    data = tmp_path / "slice.parquet"
    data.write_bytes(parquet_bytes(labels()))
    workload = get_workload("sweep_train")
    out = workload.output.enforce(workload.run(
        batch(("weak", {"l2": 1000.0}), ("strong", {"l2": 0.1}), ("none", {"min_train_labels": 1_000_000})),
        workload.resolve_params({"trainer": "packaging", "data_uri": str(data)})), "test")
    rows = out.set_index("config_id")
    assert rows.loc["strong", "status"] == "trained" and rows.loc["strong", "units_fitted"] == 8
    assert rows.loc["strong", "score"] > 0 and 0.5 < rows.loc["strong", "holdout_auc"] <= 1
    assert rows.loc["weak", "score"] != rows.loc["strong", "score"]
    assert rows.loc["none", "status"] == "failed" and rows.loc["none", "failure_class"] == NO_FIT
    assert "8 too_few_labels" in rows.loc["none", "error"] and pd.isna(rows.loc["none", "score"])


def test_trivial_training_needs_no_data():
    workload = get_workload("sweep_train")
    out = workload.run(batch(("a", {"l2": 2.0})), workload.resolve_params({"trainer": "trivial"}))
    assert out["status"].tolist() == ["trained"] and out["score"].tolist() == [trivial_score({"l2": 2.0})]
    with pytest.raises(ValueError, match="trainer 'packaging' needs data_uri"):
        workload.resolve_params({"trainer": "packaging"})
