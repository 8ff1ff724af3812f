"""Fan-out overhead: the engine against naive mapping and a multiprocessing pool, on the same no-op units.

    python benchmarks/fanout_overhead.py --units N [--buckets B] [--batches-per-shard S] [--naive auto|on|off] [--vcpus V]

The cases the targets are stated for: `--units 3000` and `--units 10000` (3,000 batches), and
`--units 100000 --buckets 10000` (10,000 batches).

All three run the no-op workload (`batch_worker.workloads.noop`) over the same N units, so the
figures are overhead:

  engine  the `units_of_work` DAG through `dag.test()`: generate + prep (DuckDB) into B batches
          (default min(N, 3000)), plan, one array job per shard of 1000 batches on the local
          endpoint (children are processes, BATCH_LOCAL_VCPUS at a time), collect
  naive   the `naive_mapping` DAG (benchmarks/dags): one mapped task instance per unit. Airflow
          refuses more than [core] max_map_length (1024) instances; `--naive auto` (the default)
          skips it above that, `--naive on` raises the limit for this run only
  floor   a multiprocessing.Pool of V processes running the workload on each unit of the same
          input, pool start included: what the machine can do with no orchestration at all

The engine's and the naive DAG's clocks start after `dag.test()`'s in-process execution API has
started, in a bundle holding only these two DAGs (benchmarks/harness.py says why); the API's start
is printed. Ends with one line of figures: seconds, and the ratios the targets are stated in
(naive/engine >= 10x; engine/floor <= 1.2x).
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: The engine's time may be at most this multiple of the multiprocessing floor's.
FLOOR_TARGET = 1.2
sys.path.insert(0, str(REPO))


def _noop_chunk(args: tuple[list[str], list[int], list[float]]) -> int:
    import pandas as pd
    from batch_worker.workloads import get_workload

    workload = get_workload("noop")
    params = workload.resolve_params({})
    unit_ids, seqs, values = args
    frame = pd.DataFrame({"unit_id": unit_ids, "seq": seqs, "value": values})
    return sum(len(workload.run(unit, params)) for _, unit in frame.groupby("unit_id", sort=False))


def floor_seconds(units: int, processes: int) -> float:
    from operators.pipelines.noop import noop_data

    started = time.perf_counter()
    frame = noop_data.frame(units, rows_per_unit=1)
    chunks = [(part["unit_id"].tolist(), part["seq"].tolist(), part["value"].tolist())
              for part in (frame.iloc[i:i + 100] for i in range(0, len(frame), 100))]
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        done = sum(pool.map(_noop_chunk, chunks))
    elapsed = time.perf_counter() - started
    assert done == units, (done, units)
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--units", type=int, required=True)
    parser.add_argument("--buckets", type=int, default=None, help="batches (bucket_count); default min(units, 3000)")
    parser.add_argument("--batches-per-shard", type=int, default=None,
                        help="batches per shard (one array job each); default: the DAG's (1000)")
    parser.add_argument("--naive", choices=["auto", "on", "off"], default="auto")
    parser.add_argument("--vcpus", type=int, default=2, help="local compute environment vCPUs and pool size")
    args = parser.parse_args()
    buckets = args.buckets or min(args.units, 3000)
    naive = args.naive == "on" or (args.naive == "auto" and args.units <= 1024)

    from benchmarks.harness import DAGS, airflow_home, harness_line, start_execution_api, timed_run

    naive_dag = REPO / "benchmarks" / "dags" / "naive_mapping.py"
    airflow_home("bench-fanout", [DAGS / "units_of_work.py", naive_dag])
    if naive and args.units > 1024:
        os.environ["AIRFLOW__CORE__MAX_MAP_LENGTH"] = str(args.units)
    from localaws.stack import running_endpoint

    with tempfile.TemporaryDirectory(prefix="fanout-") as scratch, running_endpoint(vcpus=args.vcpus):
        os.environ["DATA_ROOT"] = scratch
        floor = floor_seconds(args.units, args.vcpus)
        conf = {"units": args.units, "rows_per_unit": 1, "bucket_count": buckets, "salt": uuid.uuid4().hex}
        if args.batches_per_shard:
            conf["batches_per_shard"] = args.batches_per_shard
        api_start_s = start_execution_api()
        engine, run = timed_run(DAGS / "units_of_work.py", run_conf=conf)
        from operators.kit.summary import format_task_times, task_times, xcom_value

        summary = xcom_value(run.dag_id, run.run_id, "summary")
        print("engine task times:")
        print(format_task_times(task_times(run.dag_id, run.run_id)))
        assert summary["units"] == args.units and summary["succeeded"] == summary["batches"], summary
        naive_s = None
        if naive:
            naive_s, _ = timed_run(naive_dag, run_conf={"units": args.units})

    print(f"units {args.units}, batches {summary['batches']} in {summary['shards']} shard(s), "
          f"{len(summary['job_ids'])} array job(s), vCPUs {args.vcpus}")
    print(f"  engine (prep + fan-out + collect)  {engine:8.1f} s")
    print(f"  naive mapping (1 task per unit)    " + (f"{naive_s:8.1f} s" if naive_s else "  not run "
          f"({'above max_map_length 1024; --naive on raises it' if args.naive == 'auto' else 'off'})"))
    print(f"  multiprocessing floor              {floor:8.1f} s")
    print(f"  {harness_line(api_start_s)}")
    ratio = f"{naive_s / engine:.1f}x" if naive_s else "n/a"
    over_floor = engine / floor
    print(f"units={args.units} batches={summary['batches']} engine_s={engine:.1f} "
          f"naive_s={'%.1f' % naive_s if naive_s else 'n/a'} floor_s={floor:.1f} naive_vs_engine={ratio} "
          f"engine_vs_floor={over_floor:.2f}x target={FLOOR_TARGET}x met={'yes' if over_floor <= FLOOR_TARGET else 'no'} "
          f"engine_vs_floor_counting_api_start={(engine + api_start_s) / floor:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
