"""GPU/CPU benchmark cases: float32 (and TF32) matrix multiply, an image pipeline and a Gaussian blur.

One code path serves both devices: every case is written against `xp` (numpy or cupy) and `ndi`
(scipy.ndimage or cupyx.scipy.ndimage). Inputs are generated on the host from a seed, so the CPU
and the GPU see identical data.

Each measured row carries three timings:

- ``first_call_s``: the first end-to-end call of the case in this process, one-time costs included
  (on the GPU: CUDA context creation on a run's first case, kernel compilation or kernel-cache load,
  cuBLAS handle and algorithm selection, memory-pool growth);
- ``end_to_end_s``: median of ``repeats`` steady-state calls that copy the inputs host->device, run
  the kernels and copy the result device->host;
- ``kernel_s``: median of ``repeats`` steady-state calls on inputs already on the device, timed with
  CUDA events on the GPU and the wall clock on the CPU (where there is nothing to copy).

Achieved throughput uses ``kernel_s``: TFLOP/s (2 n^3 flop) for matmul, GB/s for the image cases
under the byte models documented on `pipeline_bytes` and `blur_bytes`.
"""
from __future__ import annotations

import json
import os
import re
import statistics
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from batch_worker.gpu_rows import DEVICES
from batch_worker.gpu_rows import OUTPUT as GPU_OUTPUT
from batch_worker.xp import get_xp

NO_CUDA = "no CUDA device"
OK = "ok"
NO_DEVICE = "gpu: none visible"
TF32_ON_CPU = "not applicable: TF32 is a GPU tensor-core mode"

#: ITU-R BT.601 luma weights for the RGB -> gray conversion.
GRAY_WEIGHTS = (0.299, 0.587, 0.114)
#: Sobel kernels for correlation: d/dx along the last axis, d/dy along the one before it.
SOBEL_X = ((-1.0, 0.0, 1.0), (-2.0, 0.0, 2.0), (-1.0, 0.0, 1.0))
SOBEL_Y = ((-1.0, -2.0, -1.0), (0.0, 0.0, 0.0), (1.0, 2.0, 1.0))
BLUR_SIGMA = 4.0

#: Verification tolerances, per family and precision; see `verify`.
TOLERANCES = {
    ("matmul", "fp32"): 1e-4,  # relative Frobenius error vs a float64 product of the same inputs
    ("matmul", "tf32"): 1e-2,  # TF32 keeps 10 mantissa bits
    ("image_pipeline", "fp32"): 1e-3,  # max abs difference of the normalised output
    ("gaussian_blur", "fp32"): 1e-4,  # max abs difference; values lie in [0, 1)
}

#: Column order and dtypes of a result row (`run_cases`): the workload's declared output, so frames of rows
#: with and without numbers have the same schema.
ROW_FIELDS = GPU_OUTPUT.names
ROW_DTYPES = GPU_OUTPUT.pandas_dtypes()


@dataclass(frozen=True)
class Peak:
    """Vendor peak figures of one GPU model (dense; TF32 None where not stated)."""

    label: str
    fp32_tflops: float
    tf32_tflops: float | None
    memory_gbps: float


#: Known GPUs, matched against the CUDA device name; anything else has no percent of peak.
PEAKS: tuple[tuple[re.Pattern, Peak], ...] = (
    (re.compile(r"H100.*(SXM|HBM3)"), Peak("H100 SXM", 67.0, 495.0, 3350.0)),
    (re.compile(r"H200(?!.*NVL)"), Peak("H200", 67.0, 495.0, 4800.0)),
    (re.compile(r"A10G"), Peak("A10G", 31.2, None, 600.0)),
)


def peak_for(device: str) -> Peak | None:
    """Peak figures for a device string such as "gpu: NVIDIA H100 80GB HBM3"; None when unknown or a CPU."""
    if not device.startswith("gpu: "):
        return None
    return next((peak for pattern, peak in PEAKS if pattern.search(device)), None)


# --- the cases -------------------------------------------------------------------------------


def matmul(xp: ModuleType, ndi: ModuleType, a, b):
    """C = A @ B."""
    return xp.matmul(a, b)


def image_pipeline(xp: ModuleType, ndi: ModuleType, images):
    """RGB batch (B, H, W, 3) -> normalised Sobel edge magnitude (B, H/2, W/2), in the input's dtype.

    Stages: luma conversion, 2x2 mean-pool (half resolution), Sobel gradient magnitude
    (reflect borders), per-image zero mean and unit variance.
    """
    gray = images[..., 0] * GRAY_WEIGHTS[0] + images[..., 1] * GRAY_WEIGHTS[1] + images[..., 2] * GRAY_WEIGHTS[2]
    batch, height, width = gray.shape
    half = gray.reshape(batch, height // 2, 2, width // 2, 2).mean(axis=(2, 4))
    # 3-D kernels with a unit batch axis, so no image in a batch bleeds into its neighbour.
    gx = ndi.correlate(half, xp.asarray(SOBEL_X, dtype=half.dtype)[None], mode="reflect")
    gy = ndi.correlate(half, xp.asarray(SOBEL_Y, dtype=half.dtype)[None], mode="reflect")
    magnitude = xp.hypot(gx, gy)
    mean = magnitude.mean(axis=(1, 2), keepdims=True)
    std = magnitude.std(axis=(1, 2), keepdims=True)
    return (magnitude - mean) / std


def gaussian_blur(xp: ModuleType, ndi: ModuleType, images):
    """Gaussian blur (sigma `BLUR_SIGMA`, reflect borders) of each image of a (B, H, W, 3) batch, per channel."""
    return ndi.gaussian_filter(images, sigma=(0.0, BLUR_SIGMA, BLUR_SIGMA, 0.0), mode="reflect")


def pipeline_bytes(batch: int, side: int, itemsize: int = 4) -> int:
    """Compulsory memory traffic of `image_pipeline` (temporaries beyond these are not counted).

    With P = batch * side^2 * itemsize (one gray plane) and Q = P / 4 (the half-resolution plane):
    luma reads 3P, writes P; mean-pool reads P, writes Q; each Sobel correlation reads Q, writes Q
    (2 of them); hypot reads 2Q, writes Q; mean and std read Q each; the normalisation reads Q,
    writes Q. Total 5P + 12Q = 8P.
    """
    plane = batch * side * side * itemsize
    quarter = plane // 4
    return 5 * plane + 12 * quarter


def blur_bytes(batch: int, side: int, itemsize: int = 4) -> int:
    """Memory traffic of `gaussian_blur`: one separable pass per filtered axis (2), each reading and
    writing the whole RGB batch once (the 33 taps are assumed to hit in cache)."""
    return 2 * 2 * batch * side * side * 3 * itemsize


@dataclass(frozen=True)
class Case:
    """One benchmark case. `size` is n for matmul, the image side for the image cases."""

    case_id: str
    family: str  # "matmul" | "image_pipeline" | "gaussian_blur"
    size: int
    batch: int = 1
    precision: str = "fp32"  # "fp32" | "tf32" (matmul only)

    def scaled_size(self, small: bool) -> int:
        """The size actually run: n/10 for matmul and side/16 for images when `small`."""
        if not small:
            return self.size
        return self.size // 10 if self.family == "matmul" else self.size // 16

    def input_key(self, small: bool) -> tuple:
        """Cases with equal keys get identical inputs (fp32 and tf32 matmul; pipeline b1 and blur)."""
        kind = "matrices" if self.family == "matmul" else "images"
        return (kind, self.scaled_size(small), self.batch)

    def make_inputs(self, small: bool, seed: int) -> tuple[np.ndarray, ...]:
        """Host float32 inputs: two standard-normal n x n matrices, or a (B, H, W, 3) batch in [0, 1)."""
        kind, size, batch = self.input_key(small)
        rng = np.random.default_rng([seed, 0 if kind == "matrices" else 1, size, batch])
        if kind == "matrices":
            return (rng.standard_normal((size, size), dtype=np.float32),
                    rng.standard_normal((size, size), dtype=np.float32))
        return (rng.random((batch, size, size, 3), dtype=np.float32),)

    def compute(self, xp: ModuleType, ndi: ModuleType, *inputs):
        """Run the case's kernels on `inputs` (arrays of `xp`)."""
        return _KERNELS[self.family](xp, ndi, *inputs)

    def reference(self, inputs: tuple[np.ndarray, ...]) -> np.ndarray:
        """The float64 host result of the same algorithm on the same inputs."""
        import scipy.ndimage

        return np.asarray(self.compute(np, scipy.ndimage, *(a.astype(np.float64) for a in inputs)))

    def flop(self, small: bool) -> int | None:
        """Floating-point operations of a matmul case (2 n^3); None for the image cases."""
        return 2 * self.scaled_size(small) ** 3 if self.family == "matmul" else None

    def bytes_moved(self, small: bool) -> int | None:
        """Modelled memory traffic of an image case; None for matmul."""
        if self.family == "image_pipeline":
            return pipeline_bytes(self.batch, self.scaled_size(small))
        if self.family == "gaussian_blur":
            return blur_bytes(self.batch, self.scaled_size(small))
        return None


_KERNELS: dict[str, Callable] = {"matmul": matmul, "image_pipeline": image_pipeline, "gaussian_blur": gaussian_blur}


def _suite() -> tuple[Case, ...]:
    cases: list[Case] = []
    for n in (1000, 5000, 8000, 10000):
        cases.append(Case(f"matmul_f32_n{n}", "matmul", n))
        cases.append(Case(f"matmul_tf32_n{n}", "matmul", n, precision="tf32"))
    for side in (2048, 4096):
        for batch in (1, 2):
            cases.append(Case(f"image_pipeline_{side}_b{batch}", "image_pipeline", side, batch))
    for side in (2048, 4096):
        cases.append(Case(f"gaussian_blur_{side}", "gaussian_blur", side))
    return tuple(cases)


#: All cases by id, in suite order (the order `run_cases` runs them in).
CASES: dict[str, Case] = {case.case_id: case for case in _suite()}


def select_cases(case_ids: Iterable[str] | None = None) -> list[Case]:
    """The named cases (all when None), deduplicated, in suite order; ValueError on an unknown id."""
    if case_ids is None:
        return list(CASES.values())
    wanted = set(case_ids)
    unknown = sorted(wanted - set(CASES))
    if unknown:
        raise ValueError(f"unknown case id(s) {unknown}; known: {list(CASES)}")
    return [case for case_id, case in CASES.items() if case_id in wanted]


# --- devices ---------------------------------------------------------------------------------


class NotApplicable(Exception):
    """The case cannot run as labelled on this device (e.g. TF32 on a CPU)."""


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (the platform's processor string elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine() or "unknown"


class CpuBackend:
    """numpy + scipy.ndimage; inputs already live on the host, so transfers are no-ops."""

    def __init__(self) -> None:
        import scipy.ndimage

        self.xp = np
        self.ndi = scipy.ndimage
        self.device = f"cpu: {cpu_model()}"

    def to_device(self, array: np.ndarray):
        return array

    def to_host(self, array) -> np.ndarray:
        return np.asarray(array)

    def synchronize(self) -> None:
        pass

    def kernel_seconds(self, fn: Callable[[], Any]) -> float:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    def matmul_precision(self, precision: str):
        if precision == "tf32":
            raise NotApplicable(TF32_ON_CPU)
        return nullcontext()

    def release(self) -> None:
        pass


class GpuBackend:
    """cupy + cupyx.scipy.ndimage on the current CUDA device."""

    def __init__(self, cupy: ModuleType) -> None:
        import cupyx.scipy.ndimage

        self.xp = cupy
        self.ndi = cupyx.scipy.ndimage
        props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
        name = props["name"]
        self.device = f"gpu: {name.decode() if isinstance(name, bytes) else name}"
        self.compute_capability = props["major"] * 10 + props["minor"]

    def to_device(self, array: np.ndarray):
        return self.xp.asarray(array)

    def to_host(self, array) -> np.ndarray:
        return self.xp.asnumpy(array)

    def synchronize(self) -> None:
        self.xp.cuda.get_current_stream().synchronize()

    def kernel_seconds(self, fn: Callable[[], Any]) -> float:
        """Device time between two CUDA events around `fn` on the current stream."""
        start, end = self.xp.cuda.Event(), self.xp.cuda.Event()
        start.record()
        fn()
        end.record()
        end.synchronize()
        return self.xp.cuda.get_elapsed_time(start, end) / 1e3

    @contextmanager
    def matmul_precision(self, precision: str) -> Iterator[None]:
        """Pin CuPy's float32 GEMM compute type for the block: plain FP32, or TF32 tensor cores.

        Uses ``cupy._core._routines_linalg.set_compute_type`` (what ``CUPY_TF32=1`` selects at
        import), so one process can run both variants; the previous setting is restored after.
        """
        linalg = _cupy_compute_type_switch()
        if linalg is None:
            if precision == "tf32":
                raise NotApplicable("not applicable: this CuPy has no TF32 compute-type switch")
            yield
            return
        if precision == "tf32":
            if self.compute_capability < 80:
                raise NotApplicable(f"not applicable: TF32 needs compute capability 8.0+, device has "
                                    f"{self.compute_capability / 10:.1f}")
            if os.environ.get("NVIDIA_TF32_OVERRIDE") == "0":
                raise NotApplicable("not applicable: NVIDIA_TF32_OVERRIDE=0 disables TF32 in cuBLAS")
        wanted = linalg.COMPUTE_TYPE_TF32 if precision == "tf32" else linalg.COMPUTE_TYPE_DEFAULT
        previous = linalg.get_compute_type(np.float32)
        linalg.set_compute_type(np.float32, wanted)
        try:
            if linalg.get_compute_type(np.float32) != wanted:
                raise NotApplicable(f"not applicable: CuPy refused compute type {precision}")
            yield
        finally:
            linalg.set_compute_type(np.float32, previous)

    def release(self) -> None:
        self.xp.get_default_memory_pool().free_all_blocks()


def _cupy_compute_type_switch() -> ModuleType | None:
    """CuPy's GEMM compute-type module when it has the switch (get/set_compute_type), else None."""
    try:
        from cupy._core import _routines_linalg as linalg
    except ImportError:
        return None
    names = ("get_compute_type", "set_compute_type", "COMPUTE_TYPE_DEFAULT", "COMPUTE_TYPE_TF32")
    return linalg if all(hasattr(linalg, name) for name in names) else None


def visible_cupy() -> ModuleType | None:
    """The cupy module when it imports and sees at least one CUDA device, else None."""
    try:
        import cupy
    except ImportError:
        return None
    try:
        return cupy if cupy.cuda.runtime.getDeviceCount() > 0 else None
    except cupy.cuda.runtime.CUDARuntimeError:
        return None


def make_backend(device: str) -> CpuBackend | GpuBackend | None:
    """The backend for "cpu", "gpu" or "auto"; None when "gpu" is asked and no CUDA device is visible.

    "auto" is the worker's array backend (`batch_worker.xp.get_xp`, which honours $BATCH_WORKER_XP):
    the GPU when one is visible, else the CPU. "gpu" never falls back to the CPU.
    """
    if device not in DEVICES:
        raise ValueError(f"device must be 'auto', 'cpu' or 'gpu', not {device!r}")
    if device == "cpu":
        return CpuBackend()
    if device == "gpu":
        cupy = visible_cupy()
        return None if cupy is None else GpuBackend(cupy)
    xp = get_xp("auto")
    return CpuBackend() if xp is np else GpuBackend(xp)


# --- measuring -------------------------------------------------------------------------------


def verify(case_id: str, result: np.ndarray, reference: np.ndarray) -> dict[str, Any]:
    """Compare a host result with a reference result (a float64 reference or the other device's result).

    matmul: relative Frobenius error ||C - R||_F / ||R||_F; image cases: max |C - R|.
    Tolerances are `TOLERANCES` (fp32 matmul 1e-4, tf32 1e-2, pipeline 1e-3, blur 1e-4).
    """
    case = CASES[case_id]
    got, want = np.asarray(result, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    if got.shape != want.shape:
        raise ValueError(f"{case_id}: result shape {got.shape} != reference shape {want.shape}")
    if case.family == "matmul":
        metric, error = "relative_frobenius", float(np.linalg.norm(got - want) / np.linalg.norm(want))
    else:
        metric, error = "max_abs", float(np.max(np.abs(got - want)))
    tolerance = TOLERANCES[(case.family, case.precision)]
    return {"verify_metric": metric, "verify_error": error, "verify_tolerance": tolerance,
            "verified": bool(error <= tolerance)}


def _row(case: Case, small: bool, device: str, status: str, **measured: Any) -> dict[str, Any]:
    row = dict.fromkeys(ROW_FIELDS)
    row.update(case_id=case.case_id, family=case.family, precision=case.precision,
               size=case.scaled_size(small), batch=case.batch, small=small, device=device, status=status,
               host_cpus=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())
    row.update(measured)
    return row


def _wall(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def _measure(case: Case, backend: CpuBackend | GpuBackend, host_inputs: tuple[np.ndarray, ...],
             repeats: int) -> tuple[float, float, float, np.ndarray]:
    """(first_call_s, end_to_end_s, kernel_s, host result) of one case on one backend."""
    xp, ndi = backend.xp, backend.ndi

    def end_to_end() -> np.ndarray:
        device_inputs = [backend.to_device(a) for a in host_inputs]
        return backend.to_host(case.compute(xp, ndi, *device_inputs))

    backend.synchronize()
    first_call_s, result = _wall(end_to_end)
    end_to_end_s = statistics.median(_wall(end_to_end)[0] for _ in range(repeats))
    device_inputs = [backend.to_device(a) for a in host_inputs]
    backend.synchronize()
    kernel_s = statistics.median(
        backend.kernel_seconds(lambda: case.compute(xp, ndi, *device_inputs)) for _ in range(repeats))
    return first_call_s, end_to_end_s, kernel_s, result


def _throughput(case: Case, small: bool, device: str, kernel_s: float) -> dict[str, Any]:
    flop, bytes_moved = case.flop(small), case.bytes_moved(small)
    tflops = flop / kernel_s / 1e12 if flop is not None else None
    gbps = bytes_moved / kernel_s / 1e9 if bytes_moved is not None else None
    peak = peak_for(device)
    pct = peak_label = None
    if peak is not None:
        if tflops is not None:
            peak_value = peak.tf32_tflops if case.precision == "tf32" else peak.fp32_tflops
            if peak_value is not None:
                pct = 100.0 * tflops / peak_value
                peak_label = f"{peak.label} {case.precision.upper()} {peak_value:g} TFLOP/s"
        else:
            pct = 100.0 * gbps / peak.memory_gbps
            peak_label = f"{peak.label} memory {peak.memory_gbps:g} GB/s"
    return {"flop": flop, "bytes_moved": bytes_moved, "tflops": tflops, "gbps": gbps,
            "pct_of_peak": pct, "peak": peak_label}


def _fingerprint(result: np.ndarray) -> dict[str, Any]:
    flat = result.ravel()
    picks = np.linspace(0, flat.size - 1, num=min(4, flat.size)).astype(int)
    return {"checksum": float(flat.sum(dtype=np.float64)), "sample": [float(flat[i]) for i in picks]}


def run_cases(case_ids: Iterable[str] | None = None, small: bool = False, device: str = "auto",
              repeats: int = 3, seed: int = 0, verify_results: bool = True) -> list[dict[str, Any]]:
    """Run cases (all when None) on one device and return one row per case (fields `ROW_FIELDS`).

    `small` shrinks every case (matmul n/10, images side/16) for a quick pass. `device`: "cpu",
    "gpu" or "auto" (see `make_backend`). When "gpu" is asked and no CUDA device is visible every
    row has status `NO_CUDA` and no numbers. With `verify_results`, each result is
    checked against the float64 host reference of the same inputs (`verify`).

    A case that cannot run as labelled (TF32 on a CPU) or fails gets its reason as status and no
    numbers; the other cases still run.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, not {repeats}")
    cases = select_cases(case_ids)
    backend = make_backend(device)
    if backend is None:
        return [_row(case, small, NO_DEVICE, NO_CUDA, repeats=repeats, seed=seed) for case in cases]
    rows: list[dict[str, Any]] = []
    inputs_key, host_inputs, references = None, (), {}
    for case in cases:
        if case.input_key(small) != inputs_key:
            inputs_key, references = case.input_key(small), {}
            host_inputs = case.make_inputs(small, seed)
        try:
            context = backend.matmul_precision(case.precision) if case.family == "matmul" else nullcontext()
            with context:
                first_call_s, end_to_end_s, kernel_s, result = _measure(case, backend, host_inputs, repeats)
        except NotApplicable as exc:
            rows.append(_row(case, small, backend.device, str(exc), repeats=repeats, seed=seed))
            continue
        except Exception as exc:  # one failing case (e.g. GPU out of memory) must not lose the others
            rows.append(_row(case, small, backend.device, f"error: {type(exc).__name__}: {exc}",
                             repeats=repeats, seed=seed))
            continue
        finally:
            backend.release()
        measured = {"first_call_s": first_call_s, "end_to_end_s": end_to_end_s, "kernel_s": kernel_s,
                    "first_call_penalty_s": first_call_s - end_to_end_s,
                    **_throughput(case, small, backend.device, kernel_s), **_fingerprint(result),
                    "repeats": repeats, "seed": seed}
        if verify_results:
            if case.family not in references:
                references[case.family] = case.reference(host_inputs)
            measured.update(verify(case.case_id, result, references[case.family]))
        rows.append(_row(case, small, backend.device, OK, **measured))
    return rows


# --- comparing and reporting -----------------------------------------------------------------


def _side_problem(side: str, row: dict[str, Any] | None) -> str | None:
    if row is None:
        return f"{side}: not run"
    if row["status"] != OK:
        return f"{side}: {row['status']}"
    if row.get("verified") is False:
        return f"{side}: verification failed ({row['verify_error']:.3g} > {row['verify_tolerance']:g})"
    return None


def compare(cpu_rows: list[dict[str, Any]], gpu_rows: list[dict[str, Any]],
            gpu_absent_status: str = NO_CUDA) -> list[dict[str, Any]]:
    """Join CPU and GPU rows by case into the comparison table (end-to-end seconds, speedup = cpu/gpu).

    With no GPU rows at all every status is `gpu_absent_status`; a GPU row without a device is `NO_CUDA`;
    a case missing from one side only is "<side>: not run".
    """
    cpu_by_case = {row["case_id"]: row for row in cpu_rows}
    gpu_by_case = {row["case_id"]: row for row in gpu_rows}
    table = []
    for case_id in (c for c in CASES if c in cpu_by_case or c in gpu_by_case):
        cpu, gpu = cpu_by_case.get(case_id), gpu_by_case.get(case_id)
        cpu_ok = cpu is not None and cpu["status"] == OK
        gpu_ok = gpu is not None and gpu["status"] == OK
        cpu_s = cpu["end_to_end_s"] if cpu_ok else None
        gpu_s = gpu["end_to_end_s"] if gpu_ok else None
        if gpu is None:
            status = gpu_absent_status if not gpu_rows else "gpu: not run"
        elif gpu["status"] == NO_CUDA:
            status = NO_CUDA
        else:
            problems = [p for p in (_side_problem("cpu", cpu), _side_problem("gpu", gpu)) if p]
            status = "; ".join(problems) or OK
        table.append({
            "case": case_id,
            "cpu_device": cpu["device"] if cpu else None,
            "gpu_device": gpu["device"] if gpu else None,
            "cpu_s": cpu_s,
            "gpu_s": gpu_s,
            "speedup": cpu_s / gpu_s if cpu_s and gpu_s else None,
            "cpu_kernel_s": cpu["kernel_s"] if cpu_ok else None,
            "gpu_kernel_s": gpu["kernel_s"] if gpu_ok else None,
            "kernel_speedup": cpu["kernel_s"] / gpu["kernel_s"] if cpu_ok and gpu_ok else None,
            "cpu_first_call_s": cpu["first_call_s"] if cpu_ok else None,
            "gpu_first_call_s": gpu["first_call_s"] if gpu_ok else None,
            "pct_of_peak": gpu["pct_of_peak"] if gpu_ok else None,
            "status": status,
        })
    return table


def fmt_number(value: float | None, spec: str = ".4g", suffix: str = "") -> str:
    return "n/a" if value is None else f"{value:{spec}}{suffix}"


def format_table(table: list[dict[str, Any]]) -> str:
    """The comparison table as fixed-width text."""
    header = ("case", "cpu s", "gpu s", "speedup", "gpu kernel s", "% of peak", "status")
    lines = [(row["case"], fmt_number(row["cpu_s"]), fmt_number(row["gpu_s"]), fmt_number(row["speedup"], ".3g", "x"),
              fmt_number(row["gpu_kernel_s"]), fmt_number(row["pct_of_peak"], ".1f"), row["status"]) for row in table]
    widths = [max(len(str(cells[i])) for cells in [header, *lines]) for i in range(len(header) - 1)]
    return "\n".join("  ".join([*(str(c).ljust(w) for c, w in zip(cells, widths)), cells[-1]])
                     for cells in [header, *lines])


def suite_speedup(table: list[dict[str, Any]]) -> float | None:
    """Total CPU seconds over total GPU seconds, over the cases measured on both; None if there are none."""
    both = [row for row in table if row["cpu_s"] and row["gpu_s"]]
    if not both:
        return None
    return sum(row["cpu_s"] for row in both) / sum(row["gpu_s"] for row in both)


def rows_to_frame(rows: list[dict[str, Any]]):
    """Result rows as a DataFrame with `ROW_DTYPES` (the sample list becomes its JSON text)."""
    import pandas as pd

    frame = pd.DataFrame(rows, columns=list(ROW_FIELDS))
    frame["sample"] = [None if sample is None else json.dumps(sample) for sample in frame["sample"]]
    return frame.astype(ROW_DTYPES)


def write_table(rows: list[dict[str, Any]], path_csv: str | Path) -> Path:
    """Write result rows or comparison rows as CSV (empty cells for absent numbers); returns the path."""
    import pandas as pd

    path = Path(path_csv)
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def plot_comparison(table: list[dict[str, Any]], path_png: str | Path) -> Path:
    """Bar chart (Agg, log-scale y) of CPU vs GPU end-to-end seconds per case from `compare` rows.

    A missing bar is replaced by its reason ("no CUDA device", "n/a on CPU"). Needs matplotlib.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path_png)
    path.parent.mkdir(parents=True, exist_ok=True)
    values = [v for row in table for v in (row["cpu_s"], row["gpu_s"]) if v]
    bottom, top = (min(values) / 3, max(values) * 5) if values else (1e-3, 1.0)
    figure = Figure(figsize=(max(6.0, 0.7 * len(table) + 2), 5.5))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    width = 0.4
    for offset, key, colour, label in ((-width / 2, "cpu_s", "tab:blue", "CPU"),
                                       (width / 2, "gpu_s", "tab:green", "GPU")):
        present = [(index + offset, row[key]) for index, row in enumerate(table) if row[key]]
        if present:
            axes.bar(*zip(*present), width, color=colour, label=label)
        for index, row in enumerate(table):
            if not row[key]:
                axes.text(index + offset, bottom * 1.1, _missing_bar_reason(key, row), rotation=90,
                          ha="center", va="bottom", fontsize=7, color="dimgray")
    for index, row in enumerate(table):
        if row["speedup"]:
            axes.text(index + width / 2, row["gpu_s"] * 1.15, f"{row['speedup']:.1f}x", ha="center",
                      va="bottom", fontsize=7)
    axes.set_yscale("log")
    axes.set_ylim(bottom, top)
    axes.set_xticks(range(len(table)), [row["case"] for row in table], rotation=45, ha="right", fontsize=8)
    axes.set_ylabel("end-to-end seconds (log scale)")
    cpu_device, gpu_device = (next((row[k] for row in table if row[k]), None) for k in ("cpu_device", "gpu_device"))
    if gpu_device is None or gpu_device == NO_DEVICE:
        gpu_device = NO_CUDA if gpu_device else "gpu: not run"
    axes.set_title(f"CPU vs GPU per case\n{cpu_device or 'cpu: not run'}  |  {gpu_device}", fontsize=9)
    if values:
        axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, format="png", dpi=110)
    return path


def _missing_bar_reason(key: str, row: dict[str, Any]) -> str:
    if key == "cpu_s":
        return "n/a on CPU" if row["cpu_device"] else "cpu: not run"
    if row["status"] == NO_CUDA:
        return NO_CUDA
    return "n/a" if row["gpu_device"] else "not run"
