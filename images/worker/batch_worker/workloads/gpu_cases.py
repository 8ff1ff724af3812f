"""Workload "gpu_benchmark": runs a group of `batch_worker.gpu_cases` cases as one Batch job."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from batch_worker.schema import Column, InputSchema
from batch_worker.workloads import BadData, OutputColumn, OutputSchema, Parameter, Workload, register

if TYPE_CHECKING:
    import pandas as pd

#: What `gpu_cases.make_backend` accepts.
DEVICES = ("auto", "cpu", "gpu")


def _columns(dtype: str, names: str, nullable: bool = True) -> tuple[OutputColumn, ...]:
    return tuple(OutputColumn(name, dtype, nullable=nullable) for name in names.split())


#: One row per case (the order of `gpu_cases.ROW_FIELDS`); numbers a case could not measure are null.
OUTPUT = OutputSchema((
    *_columns("string", "case_id family precision", nullable=False),
    *_columns("int", "size batch", nullable=False),
    OutputColumn("small", "bool", nullable=False),
    *_columns("string", "device status", nullable=False),
    *_columns("float", "first_call_s end_to_end_s kernel_s first_call_penalty_s flop bytes_moved tflops gbps "
                       "pct_of_peak"),
    *_columns("string", "peak"),
    *_columns("float", "checksum"),
    *_columns("string", "sample verify_metric"),
    *_columns("float", "verify_error verify_tolerance"),
    OutputColumn("verified", "bool"),
    *_columns("int", "repeats seed host_cpus", nullable=False),
))


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
