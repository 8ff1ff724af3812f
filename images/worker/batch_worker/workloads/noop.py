"""The no-op workload: the engine's own test and benchmark load.

It does almost nothing per unit (counts rows and sums `value`), so a run measures the engine's
overhead: prep, fan-out, process or container starts, output and marker writes, collection.
`sleep_s` adds simulated work per batch; `fail_units` makes batches holding those units fail
as bad data (to exercise dead-lettering); `salt` changes the cache key without changing the data.
"""
from __future__ import annotations

import time
from typing import Any

import pandas as pd

from batch_worker.schema import Column, InputSchema
from batch_worker.workloads import BadData, Workload, register


@register
class NoopWorkload(Workload):
    name = "noop"
    version = "1"
    schema = InputSchema(
        columns=(Column("unit_id", "string"), Column("seq", "int", min=0), Column("value", "float")),
        unit_key=("unit_id",),
        unique_key=("unit_id", "seq"),
    )
    default_params: dict[str, Any] = {"sleep_s": 0.0, "fail_units": [], "salt": ""}

    def run(self, batch: pd.DataFrame, params: dict[str, Any]) -> pd.DataFrame:
        if params["sleep_s"]:
            time.sleep(float(params["sleep_s"]))
        bad = sorted(set(params["fail_units"]) & set(batch["unit_id"]))
        if bad:
            raise BadData(f"unit(s) {', '.join(bad)} marked as failing by fail_units")
        out = batch.groupby("unit_id", sort=True).agg(rows=("value", "size"), value_sum=("value", "sum"))
        return out.reset_index()
