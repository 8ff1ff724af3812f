"""Workload "gpu_benchmark": runs a group of `batch_worker.gpu_cases` cases as one Batch job."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from batch_worker.gpu_rows import DEVICES, OUTPUT
from batch_worker.schema import Column, InputSchema
from batch_worker.workloads import BadData, Parameter, Workload, register

if TYPE_CHECKING:
    import pandas as pd

@register
class GpuBenchmarkWorkload(Workload):
    """One unit per case id; a batch's cases run in one process, so CUDA warm-up is paid once per job."""

    name = "gpu_benchmark"
    version = "1"
    schema = InputSchema(columns=(Column("case_id", "string"),), unit_key=("case_id",))
    parameters = (
        Parameter("repeats", "integer", 3, "Steady-state calls timed per case (the median is reported)", minimum=1),
        Parameter("device", "string", "auto", "Where the cases run: auto (the GPU when one is visible), cpu or gpu",
                  enum=DEVICES),
        Parameter("small", "boolean", False, "Run the small sizes (a quick check rather than a measurement)"),
        Parameter("nonce", "string", None, "Changes the cache key only: a benchmark run passes its run id so every "
                                           "run measures anew", nullable=True),
    )
    output = OUTPUT

    def run(self, batch: "pd.DataFrame", params: dict[str, Any]) -> "pd.DataFrame":
        from batch_worker import gpu_cases

        params = self.resolve_params(params)
        case_ids = list(dict.fromkeys(batch["case_id"]))
        unknown = sorted(set(case_ids) - set(gpu_cases.CASES))
        if unknown:
            raise BadData(f"unknown case id(s) {unknown}; known: {list(gpu_cases.CASES)}")
        rows = gpu_cases.run_cases(case_ids, small=bool(params["small"]), device=params["device"],
                                   repeats=int(params["repeats"]))
        return gpu_cases.rows_to_frame(rows)
