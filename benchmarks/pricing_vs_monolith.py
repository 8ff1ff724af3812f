"""The pricing pipeline against the monolith it replaces, on the same data and machine, in one run.

    python benchmarks/pricing_vs_monolith.py --rows N [--buckets B] [--queue airbatch-cpu|airbatch-gpu]

Generates N rows of synthetic sales (operators.pipelines.pricing.pricing_data; 28 days ending 2026-02-15, so the
pipeline's window for the week ending Monday 2026-02-16 holds every row; the fewest units that make N rows in 28 days), then times

  monolith  read the dataset with pandas, then `benchmarks.pricing_monolith.run_monolith`: the
            per-unit pandas loop in one process (the "before")
  pipeline  `dag.test()` of `pricing_optimization` on that dataset: prep with quarantine, B
            batches (default 3000), one array job per shard on the local endpoint, evaluation
            with its report, decision by thresholds, publish, notify

Ends with one line: rows, units, both times, the speedup and the pipeline's units per second.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

END = "2026-02-16"
DAYS = 28
APPROVE_ALL = {"approve": {"max_mape_p50": 10, "min_coverage": 0, "max_degenerate_share": 1,
                           "max_mape_p50_increase": 10, "max_input_shift": 100, "max_dead_letter_share": 1},
               "reject": {"max_mape_p50": 10, "min_coverage": 0, "max_degenerate_share": 1,
                          "max_mape_p50_increase": 10, "max_dead_letter_share": 1}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, required=True)
    parser.add_argument("--buckets", type=int, default=3000)
    parser.add_argument("--queue", default="airbatch-cpu", choices=["airbatch-cpu", "airbatch-gpu"])
    parser.add_argument("--vcpus", type=int, default=2)
    args = parser.parse_args()

    from localaws.stack import configure, migrate, running_endpoint

    home = REPO / ".airflow" / "bench"
    configure(home)
    os.environ["AIRFLOW__LOGGING__LOGGING_LEVEL"] = "WARNING"
    migrate(home)

    import pandas as pd
    import pendulum
    import pyarrow.dataset as ds

    from benchmarks.pricing_monolith import run_monolith
    from operators.pipelines.pricing import pricing_data

    units, _ = pricing_data.plan(args.rows, None, DAYS)
    with tempfile.TemporaryDirectory(prefix="pricing-bench-") as scratch:
        data = Path(scratch) / "sales"
        started = time.perf_counter()
        stats = pricing_data.generate(data, args.rows, units=units, days=DAYS, start_date="2026-01-19")
        print(f"generated {args.rows} rows of {units} units in {time.perf_counter() - started:.1f} s "
              f"({stats.get('bad_rows', 'some')} bad rows)")
        params = {"holdout_days": 7}

        started = time.perf_counter()
        frame = ds.dataset(str(data), format="parquet", partitioning=None).to_table().to_pandas()
        monolith = run_monolith(frame, params)
        monolith_s = time.perf_counter() - started
        del frame

        os.environ["DATA_ROOT"] = str(Path(scratch) / "root")
        os.environ["AIRBATCH_INPUT_PREFIXES"] = str(data)  # the generated input lies outside DATA_ROOT
        with running_endpoint(vcpus=args.vcpus):
            from airflow.dag_processing.dagbag import DagBag
            from airflow.utils.state import DagRunState

            from operators.kit.summary import xcom_value

            dag = DagBag(dag_folder=str(REPO / "dags" / "pricing_optimization.py")).dags["pricing_optimization"]
            started = time.perf_counter()
            run = dag.test(logical_date=pendulum.parse(END), run_conf={
                "input_uri": str(data), "bucket_count": args.buckets, "queue": args.queue,
                "workload_params": params, "thresholds": APPROVE_ALL})
            pipeline_s = time.perf_counter() - started
            if run.state != DagRunState.SUCCESS:
                raise SystemExit(f"pipeline run ended {run.state}")
            summary = xcom_value(run.dag_id, run.run_id, "notify")

    priced = int((monolith["status"] == "ok").sum())
    metrics = summary["metrics"]
    print(f"monolith: {len(monolith)} units ({priced} priced) in {monolith_s:.1f} s")
    print(f"pipeline: {metrics['units_scored']} units ({metrics['units_priced']} priced) in {pipeline_s:.1f} s, "
          f"{summary['fanout']['batches']} batches, {summary['fanout']['shards']} shard(s)")
    if metrics["units_priced"] != priced:
        print(f"note: priced units differ ({metrics['units_priced']} vs {priced}): prep quarantined "
              f"{summary['rows_quarantined']} rows the monolith cleaned on its own")
    print(f"rows={args.rows} units={units} monolith_s={monolith_s:.1f} pipeline_s={pipeline_s:.1f} "
          f"speedup={monolith_s / pipeline_s:.1f}x pipeline_units_per_s={metrics['units_scored'] / pipeline_s:.0f} "
          f"vcpus={args.vcpus}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
