"""A pipeline against its kernel alone: how much of what the machine can compute a whole run delivers.

    python benchmarks/kernel_limit.py [--pipeline pricing] [--rows N] [--processes P] [--vcpus V] [--buckets B]
    python benchmarks/kernel_limit.py --pipeline packaging [--groups G] [--labels-per-week L] [--weeks W] [...]

Generates the dataset and runs the pipeline exactly as its own benchmark does (pricing:
`pricing_vs_monolith.pricing_pipeline`, N rows of sales; packaging: `packaging_training.training_pipeline`,
L labels a week for W weeks, 4 x G units), then runs the kernel alone over the same batches:

  pipeline  `dag.test()` of the DAG on the local endpoint (V vCPUs), every task: dataset, prepare,
            plan, the array jobs of `run_shard`, collect, evaluate with its report, decision, publish,
            notify. Its clock is `harness.timed_run`'s, as in pricing_vs_monolith.py: it starts after
            `dag.test()`'s in-process execution API has answered its first request (that start is
            printed, not counted) and stops when `dag.test()` returns, the DAG run ended;
  kernel    P processes (default: one per core), each given a share of the batch files the pipeline's
            prep wrote (its manifest, `operators.kit.prep.read_manifest`; shares balanced by rows),
            each reading its batches with the worker's own read (`batch_worker.runtime.read_batch`)
            and calling the workload's `run` on each: the function an array child calls per batch,
            with the parameters the pipeline's shards ran with. No Airflow, no Batch, no output check,
            no encoding, nothing written: each process keeps its results in memory. Its clock runs from
            the first read of any process to the last result of any process (one monotonic clock for
            all). The processes' start, their imports and the workload's array module are paid before
            it; handing the results to this process for the comparison comes after it. For a like-for-like
            figure give P the local compute environment's vCPUs (V; both 2 on a 2-core machine).

The two outputs are then checked equal (`benchmarks.compare.differences`, per unit: the workload's
declared output, its float columns within 1e-6 relative, every other column exactly); exit 1 when
they differ. The kernel runs after the pipeline (it needs prep's batches), so on a shared machine
the two sides may meet different loads: the load average is printed. Prints both units per second,
the pipeline's task times, where the pipeline's seconds go against the kernel's (prepare, run_shard,
evaluate, and the rest: every other task and `dag.test()`'s own time between tasks; each also as a
multiple of kernel_s), the CPU seconds of each (this process and its descendants, the Batch jobs
included, sampled by `harness.CpuClock`) against the kernel's, with the ratio that no overlap of the
pipeline's tasks could pass on these cores (its CPU seconds over the cores are the least wall time it
can take), and ends with one line of figures:

    rows=... units=... batches=... kernel_s=... kernel_units_per_s=... pipeline_s=...
    pipeline_units_per_s=... pipeline_vs_kernel=... target=... met=...

`pipeline_vs_kernel` is the pipeline's units per second over the kernel's (kernel_s / pipeline_s);
its target is 0.70 from 14M input rows and 0.50 from 2.8M (`target=none met=n/a` below that).
Rows are the input rows generated (pricing: N; packaging: W x L labels).
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import queue
import re
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

    from benchmarks.harness import PipelineRun

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

#: The pipeline's units per second as a share of the kernel's, by input rows (the largest size not above N applies).
TARGETS = {2_800_000: 0.50, 14_000_000: 0.70}
#: The tasks the breakdown names; every other task and the time between tasks are "rest".
NAMED_TASKS = ("prepare", "run_shard", "evaluate")
#: The last line's figures, in order.
FIGURES = ("rows", "units", "batches", "kernel_s", "kernel_units_per_s", "pipeline_s", "pipeline_units_per_s",
           "pipeline_vs_kernel", "target", "met")


@dataclass
class KernelRun:
    seconds: float  # the first read of any process to the last result of any process
    outputs: "pd.DataFrame"
    processes: int
    read_s: float  # summed over the processes
    run_s: float  # summed over the processes
    cpu_s: float = 0.0  # CPU seconds on `seconds`' clock, summed over the processes


def shares(manifest: "pd.DataFrame", processes: int) -> list[list[str]]:
    """The manifest's batch URIs cut into at most `processes` shares of about equal rows (the largest batch
    to the share with the fewest rows so far); no share is empty."""
    count = max(1, min(processes, len(manifest)))
    loads, parts = [0] * count, [[] for _ in range(count)]
    for row in manifest.sort_values(["rows", "batch_id"], ascending=[False, True]).itertuples(index=False):
        least = loads.index(min(loads))
        loads[least] += int(row.rows)
        parts[least].append(row.uri)
    return parts


def _kernel_share(workload_name: str, params: dict, uris: list[str], start, results) -> None:
    """One kernel process: read and run its batches between the start barrier and its last result, then
    hand the results over (a failure is handed over as its traceback)."""
    try:
        from batch_worker.runtime import read_batch
        from batch_worker.workloads import get_workload
        from batch_worker.xp import get_xp

        workload = get_workload(workload_name)
        get_xp()  # the array module, as a worker has it by its second batch
        start.wait()
        started, cpu_started = time.monotonic(), time.process_time()
        frames, read_s, run_s = [], 0.0, 0.0
        for uri in uris:
            at = time.monotonic()
            batch = read_batch(uri)
            read_at = time.monotonic()
            frames.append(workload.run(batch, params))
            read_s, run_s = read_s + read_at - at, run_s + time.monotonic() - read_at
        ended, cpu_s = time.monotonic(), time.process_time() - cpu_started
        results.put((started, ended, read_s, run_s, frames, cpu_s))
    except BaseException:  # the parent waits for every share: it must hear of a failure
        start.abort()
        results.put(traceback.format_exc())


def run_kernel(manifest_uri: str, workload_name: str, params: dict, processes: int) -> KernelRun:
    """The workload's `run` over every batch of the manifest in `processes` processes (spawned, not forked from
    this one, which holds Airflow and the endpoint's threads); see the module's docstring for the clock."""
    import pandas as pd

    from operators.kit.prep import read_manifest

    manifest = read_manifest(manifest_uri)
    if manifest.empty:
        raise SystemExit(f"{manifest_uri} lists no batches: the kernel has nothing to run")
    parts = shares(manifest, processes)
    context = multiprocessing.get_context("spawn")
    start, results = context.Barrier(len(parts)), context.Queue()
    workers = [context.Process(target=_kernel_share, args=(workload_name, params, part, start, results),
                               name=f"kernel-{index}") for index, part in enumerate(parts)]
    for worker in workers:
        worker.start()
    received = []
    try:
        while len(received) < len(workers):
            try:
                received.append(results.get(timeout=1))
            except queue.Empty:
                dead = [w for w in workers if w.exitcode not in (None, 0)]
                if dead:
                    raise SystemExit(f"kernel process {dead[0].name} exited {dead[0].exitcode} without a result")
    finally:
        for worker in workers:
            worker.join(timeout=30)
            if worker.is_alive():
                worker.terminate()
    failures = [item for item in received if isinstance(item, str)]
    if failures:
        raise SystemExit(f"a kernel process failed:\n{failures[0]}")
    return KernelRun(seconds=max(r[1] for r in received) - min(r[0] for r in received),
                     outputs=pd.concat([frame for r in received for frame in r[4]], ignore_index=True),
                     processes=len(workers), read_s=sum(r[2] for r in received), run_s=sum(r[3] for r in received),
                     cpu_s=sum(r[5] for r in received))


def shard_workload(fanout: dict) -> tuple[str, dict]:
    """The workload and the parameters the pipeline's shards ran with (their results files say)."""
    from operators.kit.engine import read_results

    shards = [r["shard"] for r in read_results(fanout["results"], None)]
    if any((s["workload"], s["params"]) != (shards[0]["workload"], shards[0]["params"]) for s in shards):
        raise SystemExit("the run's shards ran different workloads or parameters; expected one of each")
    return shards[0]["workload"], shards[0]["params"]


def differences(workload_name: str, pipeline: "pd.DataFrame", kernel: "pd.DataFrame") -> list[str]:
    """What differs per unit between the two outputs, over the workload's declared output columns."""
    from batch_worker.workloads import get_workload

    from benchmarks.compare import differences as compared

    workload = get_workload(workload_name)
    columns = [c for c in workload.output.columns if c.name not in workload.schema.unit_key]
    return compared(pipeline, kernel, key=workload.schema.unit_key, names=("the pipeline", "the kernel"),
                    exact=[c.name for c in columns if c.dtype != "float"],
                    close=[c.name for c in columns if c.dtype == "float"])


def breakdown_line(task_times: list[tuple[str, int, float]], pipeline_s: float, kernel_s: float) -> str:
    """Where the pipeline's seconds go, each part also as a multiple of the kernel's seconds."""
    seconds = {task_id: s for task_id, _, s in task_times}
    named = {task_id: seconds.get(task_id, 0.0) for task_id in NAMED_TASKS}
    other_tasks = sum(s for task_id, s in seconds.items() if task_id not in NAMED_TASKS)
    rest = pipeline_s - sum(named.values())

    def part(name: str, value: float) -> str:
        return f"{name} {value:.2f} s ({value / kernel_s:.1f}x)"

    over = named["run_shard"] - kernel_s
    return (f"breakdown against the kernel's {kernel_s:.2f} s: " + ", ".join(part(n, v) for n, v in named.items())
            + f" [run_shard {over:+.2f} s over the kernel], " + part("rest", rest)
            + f" [other tasks {other_tasks:.2f} s, dag.test() between tasks {rest - other_tasks:.2f} s]"
            + f" = pipeline {pipeline_s:.2f} s ({pipeline_s / kernel_s:.1f}x)")


def cpu_line(task_cpu_s: dict[str, float], pipeline_cpu_s: float, kernel_cpu_s: float, kernel_s: float,
             cores: int) -> str:
    """The pipeline's CPU seconds by task against the kernel's, and the ratio no overlap of its tasks can pass on
    these cores: the pipeline cannot take less wall time than its CPU seconds over the cores."""
    named = {task_id: task_cpu_s.get(task_id, 0.0) for task_id in NAMED_TASKS}
    rest = max(0.0, pipeline_cpu_s - sum(named.values()))
    floor_s = pipeline_cpu_s / cores
    return (f"cpu: pipeline {pipeline_cpu_s:.2f} CPU-s (" + ", ".join(f"{n} {v:.2f}" for n, v in named.items())
            + f", rest {rest:.2f}) against the kernel's {kernel_cpu_s:.2f} CPU-s; on {cores} core(s) the pipeline's "
            f"CPU alone needs {floor_s:.2f} s however its tasks overlap: pipeline_vs_kernel at most "
            f"{kernel_s / floor_s if floor_s else float('inf'):.2f}")


def figures_line(rows: int, units: int, batches: int, kernel_s: float, pipeline_s: float) -> str:
    ratio = kernel_s / pipeline_s
    target = next((t for size, t in sorted(TARGETS.items(), reverse=True) if rows >= size), None)
    met = "n/a" if target is None else "yes" if ratio >= target else "no"
    return (f"rows={rows} units={units} batches={batches} kernel_s={kernel_s:.2f} "
            f"kernel_units_per_s={units / kernel_s:.0f} pipeline_s={pipeline_s:.2f} "
            f"pipeline_units_per_s={units / pipeline_s:.0f} pipeline_vs_kernel={ratio:.2f} "
            f"target={'none' if target is None else f'{target:.2f}'} met={met}")


def parse_figures(line: str) -> dict[str, str]:
    """The last line's figures by name; ValueError when the line is not one."""
    pairs = dict(re.findall(r"(\w+)=(\S+)", line))
    if tuple(pairs) != FIGURES or " ".join(f"{k}={v}" for k, v in pairs.items()) != line.strip():
        raise ValueError(f"not a line of figures ({', '.join(FIGURES)}): {line!r}")
    return pairs


def against_kernel(pipeline: "PipelineRun", rows: int, processes: int) -> int:
    """Run the kernel over the pipeline's batches, check the outputs equal and print the figures; 1 when
    they differ."""
    from benchmarks.harness import harness_line

    workload_name, params = shard_workload(pipeline.fanout)
    kernel = run_kernel(pipeline.prepared["manifest_uri"], workload_name, params, processes)
    problems = differences(workload_name, pipeline.outputs, kernel.outputs)
    units, batches = len(pipeline.outputs), pipeline.fanout["batches"]
    print(f"kernel: {len(kernel.outputs):,} units of {batches} batches in {kernel.processes} process(es), "
          f"{kernel.seconds:.2f} s, {len(kernel.outputs) / kernel.seconds:,.0f} units/s (summed over the processes: "
          f"reads {kernel.read_s:.2f} s, workload's run {kernel.run_s:.2f} s)")
    print(f"pipeline: {units:,} units of {batches} batches in {pipeline.fanout['shards']} shard(s), "
          f"{pipeline.seconds:.2f} s, {units / pipeline.seconds:,.0f} units/s")
    print(harness_line(pipeline.api_start_s))
    print("outputs: " + ("equal (every declared column; floats within 1e-6)" if not problems
                         else "DIFFER: " + "; ".join(problems)))
    print(breakdown_line(pipeline.task_times, pipeline.seconds, kernel.seconds))
    print(cpu_line(pipeline.task_cpu_s or {}, pipeline.cpu_s, kernel.cpu_s, kernel.seconds,
                   len(os.sched_getaffinity(0))))
    print("load average (1, 5, 15 min) now: " + ", ".join(f"{load:.2f}" for load in os.getloadavg())
          + " (a shared machine's figures move with it)")
    print(figures_line(rows, units, batches, kernel.seconds, pipeline.seconds))
    return 1 if problems else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pipeline", choices=("pricing", "packaging"), default="pricing")
    parser.add_argument("--rows", type=int, default=1_000_000, help="pricing: rows of sales")
    parser.add_argument("--groups", type=int, default=500, help="packaging: product groups; units = 4 x groups")
    parser.add_argument("--products-per-group", type=int, default=200, help="packaging")
    parser.add_argument("--labels-per-week", type=int, default=50_000, help="packaging")
    parser.add_argument("--weeks", type=int, default=27, help="packaging: weeks of labels")
    parser.add_argument("--buckets", type=int, default=None, help="bucket_count: the most batches (DAG default)")
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1, help="kernel processes")
    parser.add_argument("--vcpus", type=int, default=2, help="the local compute environment's vCPUs")
    args = parser.parse_args()
    if min(args.rows, args.groups, args.products_per_group, args.labels_per_week, args.weeks, args.processes) < 1:
        parser.error("--rows, --groups, --products-per-group, --labels-per-week, --weeks and --processes must be "
                     "at least 1")

    from benchmarks.harness import DAGS, airflow_home

    dag_file = DAGS / ("pricing_optimization.py" if args.pipeline == "pricing" else "packaging_training.py")
    airflow_home(f"bench-kernel-{args.pipeline}", [dag_file])
    with tempfile.TemporaryDirectory(prefix="kernel-limit-") as scratch:
        if args.pipeline == "pricing":
            from benchmarks.pricing_vs_monolith import pricing_pipeline

            rows = args.rows
            _, pipeline = pricing_pipeline(rows, Path(scratch), buckets=args.buckets, vcpus=args.vcpus)
        else:
            from benchmarks.packaging_training import training_pipeline

            rows = args.weeks * args.labels_per_week
            pipeline = training_pipeline(Path(scratch), groups=args.groups, products_per_group=args.products_per_group,
                                         labels_per_week=args.labels_per_week, weeks=args.weeks,
                                         buckets=args.buckets, vcpus=args.vcpus)
        return against_kernel(pipeline, rows, args.processes)


if __name__ == "__main__":
    sys.exit(main())
