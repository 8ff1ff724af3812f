"""The no-op workload: the engine's own test and benchmark load.

It does almost nothing per unit (counts rows and sums `value`), so a run measures the engine's
overhead: prep, fan-out, process or container starts, output and marker writes, collection.
`sleep_s` adds simulated work per batch; `fail_units` makes batches holding those units fail
as bad data (to exercise dead-lettering); `salt` changes the cache key without changing the data.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from batch_worker.schema import Column, InputSchema
from batch_worker.workloads import BadData, OutputColumn, OutputSchema, Parameter, Workload, register

if TYPE_CHECKING:
    import pandas as pd


@register
class NoopWorkload(Workload):
    name = "noop"
    version = "1"
    schema = InputSchema(
        columns=(Column("unit_id", "string"), Column("seq", "int", min=0), Column("value", "float")),
        unit_key=("unit_id",),
        unique_key=("unit_id", "seq"),
    )
    parameters = (
        Parameter("sleep_s", "number", 0.0, "Simulated work: seconds each batch sleeps", minimum=0, maximum=3600),
        Parameter("fail_units", "string_list", [], "Unit ids whose batches fail as bad data (to exercise "
                                                   "dead-lettering)"),
        Parameter("salt", "string", None, "Any text (optional): changing it changes every cache key, so "
                                          "everything is recomputed", nullable=True),
    )
    output = OutputSchema((
        OutputColumn("unit_id", "string", nullable=False, description="the unit"),
        OutputColumn("rows", "int", nullable=False, description="rows of the unit in the batch"),
        OutputColumn("value_sum", "float", description="sum of the unit's `value`"),
    ))

    def combines_batches(self, params: dict[str, Any]) -> bool:
        return not params["sleep_s"]  # the simulated work is per batch, so such batches run alone

    def run(self, batch: "pd.DataFrame", params: dict[str, Any]) -> "pd.DataFrame":
        if params["sleep_s"]:
            time.sleep(float(params["sleep_s"]))
        bad = sorted(set(params["fail_units"]) & set(batch["unit_id"]))
        if bad:
            raise BadData(f"unit(s) {', '.join(bad)} marked as failing by fail_units")
        out = batch.groupby("unit_id", sort=True).agg(rows=("value", "size"), value_sum=("value", "sum"))
        return out.reset_index()
