"""CPU vs GPU benchmark of the `batch_worker.gpu_cases` suite.

    python benchmarks/gpu_cases.py [--small] [--device auto|cpu|gpu] [--cases ID ...] [--out DIR]

Runs every case on the CPU, then on the GPU when a CUDA device is visible (``--device gpu``
requires one: exit status 1 without; ``--device cpu`` skips the GPU pass). Prints the comparison
table, one first-call-penalty line per device, writes rows.csv, comparison.csv and comparison.png
to --out (default: a new temporary directory) and ends with one line of headline figures.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

from batch_worker import gpu_cases
from batch_worker.gpu_cases import fmt_number as _fmt
from batch_worker.gpu_cases import format_table


def first_call_line(rows: list[dict[str, Any]]) -> str | None:
    """One line per device: the run's first case (which pays device start-up), the total and the largest penalty."""
    measured = [row for row in rows if row["status"] == gpu_cases.OK]
    if not measured:
        return None
    first = measured[0]
    largest = max(measured, key=lambda row: row["first_call_penalty_s"])
    total = sum(row["first_call_penalty_s"] for row in measured)
    return (f"first-call penalty [{first['device']}]: {first['case_id']} {first['first_call_s']:.4g} s first vs "
            f"{first['end_to_end_s']:.4g} s steady ({first['first_call_penalty_s']:+.4g} s); "
            f"{total:+.4g} s summed over {len(measured)} case(s); largest {largest['first_call_penalty_s']:+.4g} s "
            f"({largest['case_id']})")


def summary_line(cpu_rows: list[dict[str, Any]], gpu_rows: list[dict[str, Any]],
                 table: list[dict[str, Any]], small: bool) -> str:
    """The closing line of headline figures, from the GPU rows when measured, else the CPU rows."""
    gpu_measured = any(row["status"] == gpu_cases.OK for row in gpu_rows)
    rows = gpu_rows if gpu_measured else cpu_rows
    by_case = {row["case_id"]: row for row in rows if row["status"] == gpu_cases.OK}
    matmul = by_case.get("matmul_f32_n5000", {})
    blur = by_case.get("gaussian_blur_4096", {})
    device = rows[0]["device"] if rows else "none"
    return (f'gpu_cases device="{device}" small={"yes" if small else "no"} '
            f"matmul_n5000_tflops={_fmt(matmul.get('tflops'), '.3g')} "
            f"pct_peak={_fmt(matmul.get('pct_of_peak'), '.1f')} "
            f"blur_4096_gbps={_fmt(blur.get('gbps'), '.3g')} "
            f"suite_speedup={_fmt(gpu_cases.suite_speedup(table), '.3g', 'x')}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="shrink every case (matmul n/10, images side/16)")
    parser.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto",
                        help="auto: GPU pass when visible; gpu: GPU required; cpu: CPU only")
    parser.add_argument("--cases", nargs="+", metavar="ID", choices=list(gpu_cases.CASES), help="default: all")
    parser.add_argument("--repeats", type=int, default=3, help="steady-state repeats per timing (median)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-verify", action="store_true", help="skip the float64 reference check")
    parser.add_argument("--out", type=Path, help="output directory (default: a new temporary directory)")
    args = parser.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="gpu_cases_"))
    options = dict(small=args.small, repeats=args.repeats, seed=args.seed, verify_results=not args.no_verify)

    cpu_rows = gpu_cases.run_cases(args.cases, device="cpu", **options)
    if args.device == "cpu":
        gpu_rows, table = [], gpu_cases.compare(cpu_rows, [], gpu_absent_status="gpu not run (--device cpu)")
    else:
        gpu_rows = gpu_cases.run_cases(args.cases, device="gpu", **options)
        table = gpu_cases.compare(cpu_rows, gpu_rows)

    print(format_table(table))
    for rows in (cpu_rows, gpu_rows):
        line = first_call_line(rows)
        if line:
            print(line)
    gpu_cases.write_table(cpu_rows + gpu_rows, out / "rows.csv")
    gpu_cases.write_table(table, out / "comparison.csv")
    written = [out / "rows.csv", out / "comparison.csv"]
    try:
        written.append(gpu_cases.plot_comparison(table, out / "comparison.png"))
    except ImportError as exc:
        print(f"comparison.png skipped: {exc}")
    print("wrote " + ", ".join(str(path) for path in written))
    print(summary_line(cpu_rows, gpu_rows, table, args.small))
    no_gpu = args.device == "gpu" and any(row["status"] == gpu_cases.NO_CUDA for row in gpu_rows)
    return 1 if no_gpu else 0


if __name__ == "__main__":
    sys.exit(main())
