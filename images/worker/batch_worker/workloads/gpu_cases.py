"""Workload "gpu_benchmark": runs a group of `batch_worker.gpu_cases` cases as one Batch job."""
from __future__ import annotations

from typing import Any

import pandas as pd

from batch_worker import gpu_cases
from batch_worker.schema import Column, InputSchema
from batch_worker.workloads import BadData, Workload, number_problems, register


#: What `gpu_cases.make_backend` accepts.
DEVICES = ("auto", "cpu", "gpu")


@register
class GpuBenchmarkWorkload(Workload):
    """One unit per case id; a batch's cases run in one process, so CUDA warm-up is paid once per job.

    Output: one row per case, columns and dtypes `gpu_cases.ROW_DTYPES`.
    """

    name = "gpu_benchmark"
    version = "1"
    schema = InputSchema(columns=(Column("case_id", "string"),), unit_key=("case_id",))
    #: `nonce` changes the cache key only: a benchmark run passes its run id so every run measures anew.
    default_params = {"device": "auto", "small": False, "repeats": 3, "nonce": ""}

    def validate(self, params: dict[str, Any]) -> list[str]:
        problems = number_problems(params, ("repeats",), integer=True)
        if not problems and params["repeats"] < 1:
            problems.append(f"repeats must be >= 1, got {params['repeats']}")
        if params["device"] not in DEVICES:
            problems.append(f"device must be one of {list(DEVICES)}, got {params['device']!r}")
        if not isinstance(params["small"], bool):
            problems.append(f"small must be true or false, got {params['small']!r}")
        return problems

    def run(self, batch: pd.DataFrame, params: dict[str, Any]) -> pd.DataFrame:
        params = self.resolve_params(params)
        case_ids = list(dict.fromkeys(batch["case_id"]))
        unknown = sorted(set(case_ids) - set(gpu_cases.CASES))
        if unknown:
            raise BadData(f"unknown case id(s) {unknown}; known: {list(gpu_cases.CASES)}")
        rows = gpu_cases.run_cases(case_ids, small=bool(params["small"]), device=params["device"],
                                   repeats=int(params["repeats"]))
        return gpu_cases.rows_to_frame(rows)
