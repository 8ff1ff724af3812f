"""Where a batch's worker time goes, by batch size: the in-process steps of `batch_worker.runtime.run_batch`.

    python benchmarks/batch_costs.py [--rows 400000] [--batches 400,40,8]

Generates pricing rows (operators.pipelines.pricing.pricing_data), prepares them with
`prep.prepare` into each number of batches, and times, per batch and in one process: the read of
the batch file, the workload's run, the output-schema check, the Parquet encoding and the writes of
the result and the done-marker. Then the start of a worker process (`import batch_worker.runtime`,
what each array child pays before its first batch). Prints one line per batch count.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=400_000)
    parser.add_argument("--batches", default="400,40,8", help="comma-separated batch counts")
    args = parser.parse_args()

    from batch_worker.runtime import checked_output, parquet_bytes, read_batch
    from batch_worker.storage import Location
    from batch_worker.workloads import get_workload
    from operators.kit import prep
    from operators.pipelines.pricing import pricing_data

    workload = get_workload("pricing")
    params = workload.resolve_params({"holdout_days": 7})
    units, _ = pricing_data.plan(args.rows, None, 28)
    with tempfile.TemporaryDirectory(prefix="batch-costs-") as scratch:
        pricing_data.generate(Path(scratch) / "sales", args.rows, units=units, days=28, start_date="2026-01-19")
        out = Location.parse(str(Path(scratch) / "out"))
        for count in (int(c) for c in args.batches.split(",")):
            result = prep.prepare(str(Path(scratch) / "sales"), workload.schema, f"{scratch}/prep-{count}", count)
            steps = dict.fromkeys(("read", "run", "check", "encode", "write"), 0.0)
            for uri in prep.read_manifest(result.manifest_uri)["uri"]:
                at = time.perf_counter()
                batch = read_batch(uri)
                steps["read"] += time.perf_counter() - at
                at = time.perf_counter()
                frame = workload.run(batch, params)
                steps["run"] += time.perf_counter() - at
                at = time.perf_counter()
                frame, schema = checked_output(workload, frame, "batch")
                steps["check"] += time.perf_counter() - at
                at = time.perf_counter()
                data = parquet_bytes(frame, schema)
                steps["encode"] += time.perf_counter() - at
                at = time.perf_counter()
                out.write_bytes(out.join(str(count), "result.parquet"), data)
                out.write_json(out.join(str(count), "_DONE.json"), {"status": "done", "rows_out": len(frame)})
                steps["write"] += time.perf_counter() - at
            per_batch = ", ".join(f"{name} {1000 * seconds / result.batches:.2f}" for name, seconds in steps.items())
            print(f"{result.batches:5d} batches of ~{result.rows_ok // result.batches:,} rows: per batch (ms) "
                  f"{per_batch}; all batches {sum(steps.values()):.2f} s")
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import batch_worker.runtime"], check=True)
    print(f"worker process start (interpreter + imports): {time.perf_counter() - started:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
