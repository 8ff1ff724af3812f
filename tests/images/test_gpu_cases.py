"""Tests of the GPU/CPU benchmark cases (CPU only; the GPU code path runs against a numpy stand-in for cupy)."""
from __future__ import annotations

import importlib.util
import sys
import time
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.ndimage

from batch_worker import gpu_cases
from batch_worker.workloads import BadData, get_workload

REPO_ROOT = Path(__file__).resolve().parents[2]
NUMBER_FIELDS = ("first_call_s", "end_to_end_s", "kernel_s", "first_call_penalty_s", "tflops", "gbps",
                 "pct_of_peak", "checksum", "sample", "verify_error", "verified")


@pytest.fixture(scope="module")
def cpu_rows():
    return gpu_cases.run_cases(small=True, device="cpu", repeats=1)


@pytest.fixture
def no_cuda(monkeypatch):
    """No CUDA device, even on a machine that has one."""
    monkeypatch.setattr(gpu_cases, "visible_cupy", lambda: None)
    monkeypatch.setenv("BATCH_WORKER_XP", "numpy")


# --- independent references ------------------------------------------------------------------


def reference_pipeline(images: np.ndarray) -> np.ndarray:
    """The image pipeline written out longhand in float64: slicing for pooling and Sobel, a loop to normalise."""
    x = images.astype(np.float64)
    gray = 0.299 * x[..., 0] + 0.587 * x[..., 1] + 0.114 * x[..., 2]
    half = (gray[:, 0::2, 0::2] + gray[:, 1::2, 0::2] + gray[:, 0::2, 1::2] + gray[:, 1::2, 1::2]) / 4
    height, width = half.shape[1:]
    padded = np.pad(half, ((0, 0), (1, 1), (1, 1)), mode="symmetric")  # scipy's "reflect"

    def at(dy, dx):
        return padded[:, 1 + dy:1 + dy + height, 1 + dx:1 + dx + width]

    gx = at(-1, 1) + 2 * at(0, 1) + at(1, 1) - at(-1, -1) - 2 * at(0, -1) - at(1, -1)
    gy = at(1, -1) + 2 * at(1, 0) + at(1, 1) - at(-1, -1) - 2 * at(-1, 0) - at(-1, 1)
    magnitude = np.sqrt(gx ** 2 + gy ** 2)
    out = np.empty_like(magnitude)
    for i, image in enumerate(magnitude):
        out[i] = (image - image.mean()) / image.std()
    return out


def reference_blur(images: np.ndarray, sigma: float = gpu_cases.BLUR_SIGMA) -> np.ndarray:
    """Separable Gaussian blur of axes 1 and 2 by explicit shifted sums over symmetric padding."""
    radius = int(4.0 * sigma + 0.5)
    offsets = np.arange(-radius, radius + 1)
    weights = np.exp(-0.5 * offsets ** 2 / sigma ** 2)
    weights /= weights.sum()
    out = images.astype(np.float64)
    for axis in (1, 2):
        pad = [(0, 0)] * out.ndim
        pad[axis] = (radius, radius)
        padded = np.pad(out, pad, mode="symmetric")
        length = out.shape[axis]
        out = sum(w * np.take(padded, np.arange(k, k + length), axis=axis) for k, w in enumerate(weights))
    return out


# --- the cases on the CPU --------------------------------------------------------------------


def test_every_case_runs_small_with_all_fields(cpu_rows):
    assert [row["case_id"] for row in cpu_rows] == list(gpu_cases.CASES)
    for row in cpu_rows:
        assert tuple(row) == gpu_cases.ROW_FIELDS
        assert row["device"] == f"cpu: {gpu_cases.cpu_model()}" and row["small"] is True
        if row["precision"] == "tf32":
            assert row["status"] == gpu_cases.TF32_ON_CPU
            assert all(row[field] is None for field in NUMBER_FIELDS)
            continue
        assert row["status"] == gpu_cases.OK, row
        assert row["first_call_s"] > 0 and row["end_to_end_s"] > 0 and row["kernel_s"] > 0
        assert row["verified"] is True and row["verify_error"] <= row["verify_tolerance"]
        assert row["pct_of_peak"] is None  # no peak table for CPUs
        assert isinstance(row["checksum"], float) and len(row["sample"]) == 4
        if row["family"] == "matmul":
            assert row["size"] == gpu_cases.CASES[row["case_id"]].size // 10
            assert row["tflops"] > 0 and row["gbps"] is None
            assert row["tflops"] == pytest.approx(2 * row["size"] ** 3 / row["kernel_s"] / 1e12)
        else:
            assert row["size"] == gpu_cases.CASES[row["case_id"]].size // 16
            assert row["gbps"] > 0 and row["tflops"] is None


def test_matmul_matches_float64_numpy():
    case = gpu_cases.CASES["matmul_f32_n1000"]
    a, b = case.make_inputs(small=True, seed=3)
    assert a.dtype == np.float32 and a.shape == (100, 100)
    result = case.compute(np, scipy.ndimage, a, b)
    expected = a.astype(np.float64) @ b.astype(np.float64)
    assert np.linalg.norm(result - expected) / np.linalg.norm(expected) < 1e-5
    assert gpu_cases.verify(case.case_id, result, expected)["verified"] is True


def test_inputs_are_deterministic_and_shared_between_variants():
    f32, tf32 = gpu_cases.CASES["matmul_f32_n1000"], gpu_cases.CASES["matmul_tf32_n1000"]
    for x, y in zip(f32.make_inputs(True, 7), tf32.make_inputs(True, 7)):
        np.testing.assert_array_equal(x, y)
    (first,) = gpu_cases.CASES["image_pipeline_2048_b2"].make_inputs(True, 7)
    (again,) = gpu_cases.CASES["image_pipeline_2048_b2"].make_inputs(True, 7)
    (other_seed,) = gpu_cases.CASES["image_pipeline_2048_b2"].make_inputs(True, 8)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other_seed)
    assert first.shape == (2, 128, 128, 3) and first.dtype == np.float32


def test_image_pipeline_matches_longhand_reference():
    images = np.random.default_rng(0).random((2, 24, 40, 3), dtype=np.float32)  # non-square catches axis mix-ups
    result = gpu_cases.image_pipeline(np, scipy.ndimage, images)
    assert result.shape == (2, 12, 20) and result.dtype == np.float32
    assert np.max(np.abs(result - reference_pipeline(images))) <= 1e-3
    # Images in a batch are processed independently.
    np.testing.assert_allclose(gpu_cases.image_pipeline(np, scipy.ndimage, images[1:]), result[1:], atol=1e-6)


def test_gaussian_blur_matches_longhand_reference():
    images = np.random.default_rng(1).random((1, 48, 40, 3), dtype=np.float32)
    result = gpu_cases.gaussian_blur(np, scipy.ndimage, images)
    assert result.shape == images.shape and result.dtype == np.float32
    assert np.max(np.abs(result - reference_blur(images))) <= 1e-5


def test_verify_flags_results_outside_tolerance():
    reference = np.ones((4, 4))
    assert gpu_cases.verify("matmul_tf32_n1000", reference * (1 + 5e-3), reference)["verified"] is True
    assert gpu_cases.verify("matmul_f32_n1000", reference * (1 + 5e-3), reference)["verified"] is False
    check = gpu_cases.verify("image_pipeline_2048_b1", reference + 2e-3, reference)
    assert check == {"verify_metric": "max_abs", "verify_error": pytest.approx(2e-3), "verify_tolerance": 1e-3,
                     "verified": False}
    with pytest.raises(ValueError, match="shape"):
        gpu_cases.verify("gaussian_blur_2048", np.ones(3), reference)


def test_byte_models():
    plane = 2 * 64 * 64 * 4
    assert gpu_cases.pipeline_bytes(2, 64) == 8 * plane
    assert gpu_cases.blur_bytes(1, 64) == 4 * 64 * 64 * 3 * 4


def test_unknown_case_and_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="unknown case"):
        gpu_cases.run_cases(["matmul_f64_n1"], small=True)
    with pytest.raises(ValueError, match="device"):
        gpu_cases.run_cases(["gaussian_blur_2048"], small=True, device="tpu")
    with pytest.raises(ValueError, match="repeats"):
        gpu_cases.run_cases(["gaussian_blur_2048"], small=True, repeats=0)


@pytest.mark.parametrize("device, label", [
    ("gpu: NVIDIA H100 80GB HBM3", "H100 SXM"),
    ("gpu: NVIDIA H200", "H200"),
    ("gpu: NVIDIA A10G", "A10G"),
    ("gpu: NVIDIA H200 NVL", None),
    ("gpu: NVIDIA H100 PCIe", None),
    ("gpu: Tesla T4", None),
    ("cpu: AMD EPYC", None),
])
def test_peak_table(device, label):
    peak = gpu_cases.peak_for(device)
    assert (peak.label if peak else None) == label


# --- no CUDA device --------------------------------------------------------------------------


def test_gpu_without_cuda_yields_rows_without_numbers(no_cuda):
    rows = gpu_cases.run_cases(["matmul_f32_n1000", "gaussian_blur_2048"], small=True, device="gpu")
    assert [row["status"] for row in rows] == [gpu_cases.NO_CUDA] * 2
    for row in rows:
        assert all(row[field] is None for field in NUMBER_FIELDS)
        assert row["device"] == "gpu: none visible"


def test_auto_without_cuda_runs_on_cpu(no_cuda):
    (row,) = gpu_cases.run_cases(["gaussian_blur_2048"], small=True, device="auto", repeats=1)
    assert row["device"].startswith("cpu: ") and row["status"] == gpu_cases.OK


def test_compare_marks_gpu_absent(cpu_rows, no_cuda):
    gpu_rows = gpu_cases.run_cases(small=True, device="gpu")
    for table in (gpu_cases.compare(cpu_rows, gpu_rows), gpu_cases.compare(cpu_rows, [])):
        assert len(table) == len(gpu_cases.CASES)
        for row in table:
            assert row["status"] == gpu_cases.NO_CUDA
            assert row["gpu_s"] is None and row["speedup"] is None and row["pct_of_peak"] is None
        by_case = {row["case"]: row for row in table}
        assert by_case["matmul_f32_n1000"]["cpu_s"] > 0
        assert by_case["matmul_tf32_n1000"]["cpu_s"] is None
        assert gpu_cases.suite_speedup(table) is None
    assert gpu_cases.compare(cpu_rows, [], gpu_absent_status="not run")[0]["status"] == "not run"


# --- the GPU code path, against a numpy stand-in for cupy ------------------------------------


class _FakeEvent:
    def record(self):
        self.at = time.perf_counter()

    def synchronize(self):
        pass


def _fake_cupy(name: bytes, capability: tuple[int, int], seen_compute_types: list) -> dict[str, types.ModuleType]:
    """Modules standing in for cupy, cupy._core._routines_linalg and cupyx.scipy.ndimage, backed by numpy."""
    linalg = types.ModuleType("cupy._core._routines_linalg")
    linalg.COMPUTE_TYPE_DEFAULT, linalg.COMPUTE_TYPE_TF32 = 1, 7
    linalg.state = {"float32": 1}
    linalg.get_compute_type = lambda dtype: linalg.state[np.dtype(dtype).name]
    linalg.set_compute_type = lambda dtype, value: linalg.state.__setitem__(np.dtype(dtype).name, value)
    core = types.ModuleType("cupy._core")
    core._routines_linalg = linalg

    def matmul(a, b):
        seen_compute_types.append(linalg.state["float32"])
        return np.matmul(a, b)

    cupy = types.ModuleType("cupy")
    cupy.__getattr__ = lambda attr: getattr(np, attr)
    cupy._core, cupy.matmul, cupy.asnumpy = core, matmul, np.asarray
    cupy.get_default_memory_pool = lambda: types.SimpleNamespace(free_all_blocks=lambda: None)
    cupy.cuda = types.SimpleNamespace(
        runtime=types.SimpleNamespace(
            CUDARuntimeError=RuntimeError, getDeviceCount=lambda: 1,
            getDeviceProperties=lambda index: {"name": name, "major": capability[0], "minor": capability[1]}),
        Device=lambda: types.SimpleNamespace(id=0),
        get_current_stream=lambda: types.SimpleNamespace(synchronize=lambda: None),
        Event=_FakeEvent,
        get_elapsed_time=lambda start, end: (end.at - start.at) * 1e3,
    )
    cupyx, cupyx_scipy = types.ModuleType("cupyx"), types.ModuleType("cupyx.scipy")
    cupyx.scipy, cupyx_scipy.ndimage = cupyx_scipy, scipy.ndimage
    return {"cupy": cupy, "cupy._core": core, "cupy._core._routines_linalg": linalg,
            "cupyx": cupyx, "cupyx.scipy": cupyx_scipy, "cupyx.scipy.ndimage": scipy.ndimage}


@pytest.fixture
def fake_gpu(monkeypatch):
    def install(name=b"NVIDIA H100 80GB HBM3", capability=(9, 0)):
        monkeypatch.delenv("BATCH_WORKER_XP", raising=False)
        seen: list = []
        modules = _fake_cupy(name, capability, seen)
        for module_name, module in modules.items():
            monkeypatch.setitem(sys.modules, module_name, module)
        return modules["cupy._core._routines_linalg"], seen
    return install


def test_gpu_path_times_verifies_and_switches_tf32(fake_gpu, cpu_rows):
    linalg, seen = fake_gpu()
    ids = ["matmul_f32_n1000", "matmul_tf32_n1000", "image_pipeline_2048_b1", "gaussian_blur_2048"]
    rows = gpu_cases.run_cases(ids, small=True, device="gpu", repeats=2)
    assert [row["status"] for row in rows] == [gpu_cases.OK] * 4
    assert all(row["device"] == "gpu: NVIDIA H100 80GB HBM3" for row in rows)
    assert all(row["verified"] for row in rows)
    # 1 first call + 2 end-to-end + 2 kernel calls per matmul case, each under its own compute type.
    assert seen == [linalg.COMPUTE_TYPE_DEFAULT] * 5 + [linalg.COMPUTE_TYPE_TF32] * 5
    assert linalg.state["float32"] == linalg.COMPUTE_TYPE_DEFAULT
    f32, tf32, pipeline, blur = rows
    assert f32["peak"] == "H100 SXM FP32 67 TFLOP/s" and tf32["peak"] == "H100 SXM TF32 495 TFLOP/s"
    assert f32["pct_of_peak"] == pytest.approx(100 * f32["tflops"] / 67.0)
    assert blur["pct_of_peak"] == pytest.approx(100 * blur["gbps"] / 3350.0)
    table = gpu_cases.compare(cpu_rows, rows)
    by_case = {row["case"]: row for row in table}
    assert by_case["matmul_f32_n1000"]["status"] == gpu_cases.OK and by_case["matmul_f32_n1000"]["speedup"] > 0
    assert by_case["matmul_tf32_n1000"]["status"] == f"cpu: {gpu_cases.TF32_ON_CPU}"
    assert by_case["matmul_f32_n5000"]["status"] == "gpu: not run"
    assert gpu_cases.suite_speedup(table) > 0


def test_tf32_not_applicable_on_older_gpus_and_unknown_peaks(fake_gpu):
    linalg, seen = fake_gpu(name=b"Tesla T4", capability=(7, 5))
    f32, tf32 = gpu_cases.run_cases(["matmul_f32_n1000", "matmul_tf32_n1000"], small=True, device="gpu", repeats=1)
    assert f32["status"] == gpu_cases.OK and f32["pct_of_peak"] is None and f32["peak"] is None
    assert tf32["status"].startswith("not applicable: TF32 needs compute capability 8.0+")
    assert tf32["kernel_s"] is None and set(seen) == {linalg.COMPUTE_TYPE_DEFAULT}


def test_auto_follows_the_worker_array_backend(fake_gpu, monkeypatch):
    fake_gpu()
    (row,) = gpu_cases.run_cases(["gaussian_blur_2048"], small=True, device="auto", repeats=1)
    assert row["device"] == "gpu: NVIDIA H100 80GB HBM3"
    monkeypatch.setenv("BATCH_WORKER_XP", "numpy")  # a job pinned to NumPy benchmarks the CPU on "auto" ...
    (row,) = gpu_cases.run_cases(["gaussian_blur_2048"], small=True, device="auto", repeats=1)
    assert row["device"].startswith("cpu: ")
    (row,) = gpu_cases.run_cases(["gaussian_blur_2048"], small=True, device="gpu", repeats=1)
    assert row["device"].startswith("gpu: ")  # ... but an explicit "gpu" still means the GPU


def test_tf32_not_applicable_when_cupy_has_no_compute_type_switch(fake_gpu):
    linalg, seen = fake_gpu()
    del linalg.set_compute_type
    f32, tf32 = gpu_cases.run_cases(["matmul_f32_n1000", "matmul_tf32_n1000"], small=True, device="gpu", repeats=1)
    assert f32["status"] == gpu_cases.OK
    assert tf32["status"] == "not applicable: this CuPy has no TF32 compute-type switch"


# --- outputs ---------------------------------------------------------------------------------


def test_write_table_and_plot(cpu_rows, fake_gpu, tmp_path):
    pytest.importorskip("matplotlib")
    fake_gpu()
    gpu_rows = gpu_cases.run_cases(["matmul_f32_n1000", "gaussian_blur_2048"], small=True, device="gpu", repeats=1)
    table = gpu_cases.compare(cpu_rows, gpu_rows)
    rows_csv = gpu_cases.write_table(cpu_rows, tmp_path / "rows.csv")
    table_csv = gpu_cases.write_table(table, tmp_path / "comparison.csv")
    assert list(pd.read_csv(rows_csv).columns) == list(gpu_cases.ROW_FIELDS)
    written = pd.read_csv(table_csv)
    assert len(written) == len(gpu_cases.CASES) and "speedup" in written.columns
    for name, rows in (("with_gpu.png", table), ("no_gpu.png", gpu_cases.compare(cpu_rows, []))):
        png = gpu_cases.plot_comparison(rows, tmp_path / name).read_bytes()
        assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000


# --- the workload and the entry point --------------------------------------------------------


def test_workload_runs_a_two_case_batch():
    workload = get_workload("gpu_benchmark")
    assert (workload.name, workload.version) == ("gpu_benchmark", "1")
    assert workload.schema.unit_key == ("case_id",) and workload.schema.names == ("case_id",)
    batch = pd.DataFrame({"case_id": ["gaussian_blur_2048", "matmul_f32_n1000", "gaussian_blur_2048"]})
    out = workload.run(batch, {"device": "cpu", "small": True, "repeats": 1})
    assert list(out.columns) == list(gpu_cases.ROW_FIELDS)
    assert list(out["case_id"]) == ["matmul_f32_n1000", "gaussian_blur_2048"]
    assert list(out["status"]) == [gpu_cases.OK] * 2
    assert out["sample"].str.startswith("[").all()
    with pytest.raises(BadData, match="unknown case"):
        workload.run(pd.DataFrame({"case_id": ["nope"]}), {})


def test_workload_output_schema_does_not_depend_on_the_device(no_cuda):
    workload = get_workload("gpu_benchmark")
    batch = pd.DataFrame({"case_id": ["matmul_f32_n1000", "matmul_tf32_n1000"]})
    on_cpu = workload.run(batch, {"device": "cpu", "small": True, "repeats": 1})
    no_gpu = workload.run(batch, {"device": "gpu", "small": True})
    assert dict(on_cpu.dtypes) == dict(no_gpu.dtypes)
    assert list(no_gpu["status"]) == [gpu_cases.NO_CUDA] * 2 and no_gpu["kernel_s"].isna().all()


def _load_benchmark_script():
    spec = importlib.util.spec_from_file_location("gpu_cases_benchmark", REPO_ROOT / "benchmarks" / "gpu_cases.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_script_small_run(no_cuda, tmp_path, capsys):
    script = _load_benchmark_script()
    args = ["--small", "--repeats", "1", "--cases", "matmul_f32_n5000", "gaussian_blur_4096", "--out", str(tmp_path)]
    assert script.main(args) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split()[:3] == ["case", "cpu", "s"]
    assert sum(line.startswith("first-call penalty [cpu: ") for line in lines) == 1
    last = lines[-1]
    assert last.startswith('gpu_cases device="cpu: ') and "small=yes" in last
    assert "pct_peak=n/a" in last and "suite_speedup=n/a" in last and "blur_4096_gbps=n/a" not in last
    assert {p.name for p in tmp_path.iterdir()} >= {"rows.csv", "comparison.csv"}
    assert script.main(["--small", "--device", "gpu", "--cases", "gaussian_blur_2048", "--out", str(tmp_path)]) == 1
