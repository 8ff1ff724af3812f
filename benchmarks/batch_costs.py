"""Where a batch's worker time goes, by batch size: the in-process steps of `batch_worker.runtime.run_batch`.

    python benchmarks/batch_costs.py [--workload pricing] [--rows 400000] [--batches 400,40,8]
    python benchmarks/batch_costs.py --workload noop --units 600 [--repeat 3] [--profile 25]

Generates input rows (pricing: operators.pipelines.pricing.pricing_data; noop: one row per unit,
operators.pipelines.noop.noop_data, as `fanout_overhead.py` does), prepares them with
`prep.prepare` into each number of batches, and times, per batch and in one process:

- the steps one by one: the read of the batch file, the workload's run, the output-schema check,
  the Parquet encoding, and the writes of the result and the done-marker;
- the array child's whole path: `runtime.run` over a worklist of all the batches, and of that the
  worker's own part (everything but the workload's `run`) by step: reading the markers, the read,
  the output check, the encoding, the writes of the result and of the done-marker, the
  failure-marker clean-up, and the rest (the marker's JSON, the log line, the loop); with
  `--repeat R` the best of R runs, for a shared machine;
- with `--profile N`, a cProfile of that `runtime.run`, its N most costly functions.

Then the start of a worker process (`import batch_worker.runtime`, what each array child pays
before its first batch). Prints one block per batch count.
"""
from __future__ import annotations

import argparse
import cProfile
import json
import logging
import os
import pstats
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def write_input(workload_name: str, folder: Path, rows: int, units: int) -> str:
    """The benchmark's input under `folder`; its URI."""
    if workload_name == "pricing":
        from operators.pipelines.pricing import pricing_data

        pricing_units, _ = pricing_data.plan(rows, None, 28)
        pricing_data.generate(folder / "input", rows, units=pricing_units, days=28, start_date="2026-01-19")
        return str(folder / "input")
    from operators.pipelines.noop import noop_data

    return noop_data.write(str(folder / "input.parquet"), units, rows_per_unit=1)


def worklist_for(workload, params: dict, manifest_uri: str, output_root: str) -> dict:
    """A worklist of every batch of the manifest for one child, as the house operator writes it."""
    from batch_worker.cache import WORKLIST_FORMAT, cache_key
    from operators.kit import prep

    manifest = prep.read_manifest(manifest_uri)
    items = [{"batch_id": int(row.batch_id), "uri": row.uri, "rows": int(row.rows), "units": int(row.units),
              "content_hash": row.content_hash,
              "key": cache_key(row.content_hash, workload.name, workload.version, params)}
             for row in manifest.itertuples(index=False)]
    return {"format": WORKLIST_FORMAT, "workload": workload.name, "workload_version": str(workload.version),
            "params": params, "output_root": output_root, "batches_per_child": len(items),
            "run": {"dag_id": "batch_costs"}, "items": items}


def step_costs(workload, params: dict, uris: list[str], out) -> dict[str, float]:
    """Seconds per step over `uris`, each step timed on its own."""
    from batch_worker.output import checked_output
    from batch_worker.runtime import parquet_bytes, read_batch

    steps = dict.fromkeys(("read", "run", "check", "encode", "write"), 0.0)
    for index, uri in enumerate(uris):
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
        out.write_bytes(out.join(f"steps-{index}", "result.parquet"), data)
        out.write_json(out.join(f"steps-{index}", "_DONE.json"), {"status": "done", "rows_out": len(frame)})
        steps["write"] += time.perf_counter() - at
    return steps


#: The child path's steps as `child_costs` times them; whatever else `runtime.run` does is "other".
CHILD_STEPS = ("run", "markers", "read", "check", "encode", "write result", "write marker", "clean-up")


def _timing(owner, name: str, totals: dict[str, float], step) -> object:
    """Wrap `owner.name` so that its seconds add to totals[step(args)]; return what it replaced."""
    real = getattr(owner, name)

    def timed(*args, **kwargs):
        at = time.perf_counter()
        try:
            return real(*args, **kwargs)
        finally:
            totals[step(args)] += time.perf_counter() - at

    setattr(owner, name, timed)
    return real


def child_costs(workload, worklist_uri: str, profile_top: int = 0,
                profile_sort: str = "tottime") -> tuple[float, dict[str, float], float]:
    """(seconds of `runtime.run` over the worklist, its seconds by step (CHILD_STEPS), its CPU seconds).

    The steps are timed by wrapping the functions the runtime calls for them (a microsecond each).
    The CPU seconds are the process's own: on a shared machine they move less than the wall time."""
    from batch_worker import runtime
    from batch_worker.cache import RESULT_FILE
    from batch_worker.storage import Location
    from batch_worker.workloads import OutputSchema

    totals = dict.fromkeys(CHILD_STEPS, 0.0)
    wrapped = [(owner, name, _timing(owner, name, totals, step)) for owner, name, step in (
        (type(workload), "run", lambda args: "run"),
        (Location, "read_many", lambda args: "markers"),
        (runtime, "read_batch", lambda args: "read"),
        (OutputSchema, "enforce", lambda args: "check"),
        (runtime.SliceRunner, "_table", lambda args: "encode"),
        (runtime, "table_bytes", lambda args: "encode"),
        (Location, "write_bytes", lambda args: "write result" if args[1].endswith(RESULT_FILE) else "write marker"),
        (Location, "remove", lambda args: "clean-up"),
    )]
    profiler = cProfile.Profile() if profile_top else None
    try:
        started, cpu_started = time.perf_counter(), time.process_time()
        if profiler:
            profiler.enable()
        code = runtime.run(worklist_uri, 0)
        if profiler:
            profiler.disable()
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    finally:
        for owner, name, real in wrapped:
            setattr(owner, name, real)
    if code != runtime.EXIT_OK:
        raise SystemExit(f"runtime.run exited {code}")
    if profiler:
        print(f"  cProfile of runtime.run (profiled: {elapsed:.2f} s), top {profile_top} by {profile_sort}:")
        pstats.Stats(profiler, stream=sys.stdout).sort_stats(profile_sort).print_stats(profile_top)
    return elapsed, totals, cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workload", choices=("pricing", "noop"), default="pricing")
    parser.add_argument("--rows", type=int, default=400_000, help="input rows (pricing)")
    parser.add_argument("--units", type=int, default=600, help="input units of one row each (noop)")
    parser.add_argument("--batches", default=None, help="comma-separated batch counts (bucket_count); default "
                                                        "400,40,8 for pricing, the unit count for noop")
    parser.add_argument("--repeat", type=int, default=1,
                        help="run the child's path this many times and report the run with the least worker time")
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="also profile the child's path and print its N most costly functions")
    parser.add_argument("--profile-sort", choices=("tottime", "cumulative"), default="tottime",
                        help="order of the profile: a function's own time, or with what it calls")
    args = parser.parse_args()
    default_counts = "400,40,8" if args.workload == "pricing" else str(args.units)
    counts = [int(c) for c in (args.batches or default_counts).split(",")]

    from batch_worker.storage import Location
    from batch_worker.workloads import get_workload
    from operators.kit import prep

    # the child's log lines are formatted and written as in a child, to nowhere
    nowhere = open(os.devnull, "w")
    logging.basicConfig(level=logging.INFO, stream=nowhere, format="%(asctime)s %(levelname)s %(message)s")
    workload = get_workload(args.workload)
    params = workload.resolve_params({"holdout_days": 7} if args.workload == "pricing" else {})
    with tempfile.TemporaryDirectory(prefix="batch-costs-") as scratch:
        folder = Path(scratch)
        input_uri = write_input(args.workload, folder, args.rows, args.units)
        for count in counts:
            result = prep.prepare(input_uri, workload.schema, f"{scratch}/prep-{count}", count)
            uris = list(prep.read_manifest(result.manifest_uri)["uri"])
            steps = step_costs(workload, params, uris, Location.parse(str(folder / f"steps-{count}")))
            per_batch = ", ".join(f"{name} {1000 * seconds / result.batches:.2f}" for name, seconds in steps.items())
            print(f"{result.batches:5d} {args.workload} batches of ~{result.rows_ok // result.batches:,} rows: "
                  f"per batch (ms) {per_batch}; all batches {sum(steps.values()):.2f} s")
            worklist_uri = str(folder / f"worklist-{count}.json")
            runs = []
            for attempt in range(args.repeat):  # each on a fresh output root, so every batch computes
                Path(worklist_uri).write_text(json.dumps(
                    worklist_for(workload, params, result.manifest_uri, str(folder / f"out-{count}-{attempt}"))))
                runs.append(child_costs(workload, worklist_uri))
            total, steps, cpu = min(runs, key=lambda run: run[0] - run[1]["run"])
            own = total - steps["run"]
            by_step = ", ".join(f"{name} {1000 * steps[name] / result.batches:.2f}" for name in CHILD_STEPS[1:])
            print(f"      child path (runtime.run): {1000 * total / result.batches:.2f} ms a batch, of which the "
                  f"workload's run {1000 * steps['run'] / result.batches:.2f} ms and the worker's own "
                  f"{1000 * own / result.batches:.2f} ms ({by_step}, other "
                  f"{1000 * (own - sum(steps[name] for name in CHILD_STEPS[1:])) / result.batches:.2f}); "
                  f"all batches {total:.2f} s ({cpu:.2f} s of CPU)")
            if args.profile:
                Path(worklist_uri).write_text(json.dumps(
                    worklist_for(workload, params, result.manifest_uri, str(folder / f"profiled-{count}"))))
                child_costs(workload, worklist_uri, args.profile, args.profile_sort)
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import batch_worker.runtime"], check=True)
    print(f"worker process start (interpreter + imports): {time.perf_counter() - started:.2f} s")
    nowhere.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
