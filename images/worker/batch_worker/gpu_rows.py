"""The GPU benchmark's rows: one per case, what `batch_worker.gpu_cases` measures and the workload "gpu_benchmark"
returns (its declared output); and the devices a case runs on.

Light at import, like the workload modules: the workload declares its output from here without loading the cases.
"""
from __future__ import annotations

from batch_worker.workloads import OutputColumn, OutputSchema

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
