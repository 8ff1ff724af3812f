"""The pricing pipeline against the monolith it replaces, on the same data and machine, in one run.

    python benchmarks/pricing_vs_monolith.py --rows N [--buckets B] [--rows-per-batch R] [--queue airbatch-cpu|airbatch-gpu]

Generates N rows of synthetic sales (operators.pipelines.pricing.pricing_data; 28 days ending 2026-02-15, so the
pipeline's window for the week ending Monday 2026-02-16 holds every row; the fewest units that make N rows in 28 days), then times

  pipeline  `dag.test()` of `pricing_optimization` on that dataset: prep with quarantine, batches
            (at most B, about R rows each; the DAG's defaults unless given), one array job per
            shard on the local endpoint, evaluation with its report, decision by thresholds,
            publish, notify; its task times are printed
  monolith  `benchmarks.pricing_monolith.run_monolith`, the per-unit pandas loop in one process
            (the "before"), over the same rows: the batches prep wrote, read with pandas one by one,
            so that both sides see the same data (a unit's segment prior pools its batch's units)

The pipeline's clock starts after `dag.test()`'s in-process execution API has started, and its bundle
holds only this DAG (benchmarks/harness.py says why); the API's start is printed, and the last
line also gives the speedup counting it. The two outputs are then checked equal: the same units, statuses and reasons, and prices within
1e-6 relative. Ends with one line: rows, units, both times, the speedup against the target of
5x at 1M rows, and the pipeline's units per second.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from benchmarks.harness import PipelineRun

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

END = "2026-02-16"
DAYS = 28
#: Limits loose enough that any result is approved: the benchmark times the run, not the decision.
APPROVE_ALL = {"approve_mape_p50": 10, "approve_coverage": 0, "approve_degenerate_share": 1,
               "approve_mape_p50_increase": 10, "approve_input_shift": 100, "approve_dead_letter_share": 1,
               "reject_mape_p50": 10, "reject_coverage": 0, "reject_degenerate_share": 1,
               "reject_mape_p50_increase": 10, "reject_dead_letter_share": 1}
#: Targets of the pipeline's speedup over the monolith, by input rows (the largest size not above N applies).
TARGETS = {1_000_000: 5, 2_800_000: 10, 14_000_000: 30}
PRICE_COLUMNS = ("recommended_price", "elasticity", "holdout_mape")
#: The workload's parameters both sides run with (the rest are the workload's defaults).
PARAMS = {"holdout_days": 7}


def monolith_over_batches(manifest_uri: str, params: dict) -> "pd.DataFrame":
    """The monolith on each batch prep wrote, concatenated: the same rows and groupings as the pipeline's."""
    import pandas as pd

    from benchmarks.pricing_monolith import run_monolith
    from operators.kit.prep import read_manifest

    frames = [run_monolith(pd.read_parquet(uri), params) for uri in read_manifest(manifest_uri)["uri"]]
    return pd.concat(frames, ignore_index=True)


def differences(pipeline: "pd.DataFrame", monolith: "pd.DataFrame") -> list[str]:
    from batch_worker.workloads.pricing import UNIT_KEY

    from benchmarks.compare import differences as compared

    return compared(pipeline, monolith, key=UNIT_KEY, exact=("status", "reason"), close=PRICE_COLUMNS,
                    names=("the pipeline", "the monolith"))


def pricing_pipeline(rows: int, scratch: Path, *, buckets: int | None = None, rows_per_batch: int | None = None,
                     queue: str = "airbatch-cpu", vcpus: int | None = 2) -> tuple[int, "PipelineRun"]:
    """Generate `rows` of sales under `scratch` and time `pricing_optimization` on them (`harness.run_pipeline`:
    `vcpus` None runs on the endpoint already running); the units generated and the run. Call after
    `harness.airflow_home` (or the tests' Airflow set-up)."""
    import pendulum

    from benchmarks.harness import DAGS, run_pipeline
    from operators.pipelines.pricing import pricing_data

    units, _ = pricing_data.plan(rows, None, DAYS)
    conf = {"queue": queue, **PARAMS, **APPROVE_ALL}
    if buckets is not None:
        conf["bucket_count"] = buckets
    if rows_per_batch is not None:
        conf["rows_per_batch"] = rows_per_batch
    data = scratch / "sales"
    started = time.perf_counter()
    stats = pricing_data.generate(data, rows, units=units, days=DAYS, start_date="2026-01-19")
    print(f"generated {rows} rows of {units} units in {time.perf_counter() - started:.1f} s "
          f"({stats.get('bad_rows', 'some')} bad rows)")
    return units, run_pipeline(DAGS / "pricing_optimization.py", logical_date=pendulum.parse(END),
                               run_conf={"input_uri": str(data), **conf}, data_root=scratch / "root",
                               input_prefix=str(data), vcpus=vcpus)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, required=True)
    parser.add_argument("--buckets", type=int, default=None, help="bucket_count: the most batches (DAG default)")
    parser.add_argument("--rows-per-batch", type=int, default=None, help="rows_per_batch (DAG default)")
    parser.add_argument("--queue", default="airbatch-cpu", choices=["airbatch-cpu", "airbatch-gpu"])
    parser.add_argument("--vcpus", type=int, default=2)
    args = parser.parse_args()

    from benchmarks.harness import DAGS, airflow_home, harness_line

    airflow_home("bench-pricing", [DAGS / "pricing_optimization.py"])
    with tempfile.TemporaryDirectory(prefix="pricing-bench-") as scratch:
        units, pipeline = pricing_pipeline(args.rows, Path(scratch), buckets=args.buckets,
                                           rows_per_batch=args.rows_per_batch, queue=args.queue, vcpus=args.vcpus)
        pipeline_s, api_start_s, pipeline_out = pipeline.seconds, pipeline.api_start_s, pipeline.outputs
        summary = pipeline.xcom("notify")

        started = time.perf_counter()
        monolith = monolith_over_batches(pipeline.prepared["manifest_uri"], PARAMS)
        monolith_s = time.perf_counter() - started

    problems = differences(pipeline_out, monolith)
    priced = int((monolith["status"] == "ok").sum())
    metrics = summary["metrics"]
    print(f"monolith: {len(monolith)} units ({priced} priced) in {monolith_s:.1f} s")
    print(f"pipeline: {metrics['units_scored']} units ({metrics['units_priced']} priced) in {pipeline_s:.1f} s, "
          f"{summary['fanout']['batches']} batches, {summary['fanout']['shards']} shard(s), "
          f"{summary['rows_quarantined']} rows quarantined by prep")
    print(harness_line(api_start_s))
    print("outputs: " + ("equal (units, statuses, reasons; prices within 1e-6)" if not problems
                         else "DIFFER: " + "; ".join(problems)))
    target = next((t for size, t in sorted(TARGETS.items(), reverse=True) if args.rows >= size), None)
    speedup = monolith_s / pipeline_s
    print(f"rows={args.rows} units={units} batches={summary['fanout']['batches']} monolith_s={monolith_s:.1f} "
          f"pipeline_s={pipeline_s:.1f} speedup={speedup:.1f}x "
          + (f"target={target}x met={'yes' if speedup >= target else 'no'} " if target else "")
          + f"pipeline_units_per_s={metrics['units_scored'] / pipeline_s:.0f} vcpus={args.vcpus} "
          f"speedup_counting_api_start={monolith_s / (pipeline_s + api_start_s):.1f}x")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
