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
from batch_worker.workloads import BadData, Workload, number_problems, register


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

    def validate(self, params: dict[str, Any]) -> list[str]:
        problems = number_problems(params, ("sleep_s",))
        if not problems and params["sleep_s"] < 0:
            problems.append(f"sleep_s must be >= 0, got {params['sleep_s']}")
        if not isinstance(params["fail_units"], list) or not all(isinstance(u, str) for u in params["fail_units"]):
            problems.append(f"fail_units must be a list of unit ids (strings), got {params['fail_units']!r}")
        if not isinstance(params["salt"], str):
            problems.append(f"salt must be a string, got {params['salt']!r}")
        return problems

    def run(self, batch: pd.DataFrame, params: dict[str, Any]) -> pd.DataFrame:
        if params["sleep_s"]:
            time.sleep(float(params["sleep_s"]))
        bad = sorted(set(params["fail_units"]) & set(batch["unit_id"]))
        if bad:
            raise BadData(f"unit(s) {', '.join(bad)} marked as failing by fail_units")
        out = batch.groupby("unit_id", sort=True).agg(rows=("value", "size"), value_sum=("value", "sum"))
        return out.reset_index()
