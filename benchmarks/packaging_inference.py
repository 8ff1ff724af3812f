"""Packaging inference end to end: a monthly run over the whole inventory and a daily run over the newest products.

    python benchmarks/packaging_inference.py [--products N] [--daily-products D] [--groups G] [--vcpus V]

Generates the synthetic inventory (operators.pipelines.packaging.inventory): N products in G groups
on 2026-03-01 and D new ones on 2026-03-02, and registers the generator's own models as an approved,
published `packaging` version (what a training run's approval leaves). Then times, through
`dag.test()` against the local endpoint, as runs started by an approval (no data interval):

  monthly  `packaging_inference_monthly` on 2026-03-02: the N products, scored and published
  daily    `packaging_inference_daily` on 2026-03-03: the D products added since (the day before)

Each run's task times are printed, then one line per run with its figures next to its target
(monthly <= 60 s for 5,000,000 products, daily <= 20 s for 50,000).
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

START = "2026-03-01"
TARGETS_S = {"monthly": 60, "daily": 20}
TARGET_SIZES = {"monthly": 5_000_000, "daily": 50_000}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--products", type=int, default=5_000_000, help="products of the monthly run")
    parser.add_argument("--daily-products", type=int, default=50_000, help="new products of the daily run")
    parser.add_argument("--groups", type=int, default=1000, help="product groups (units)")
    parser.add_argument("--buckets", type=int, default=None, help="bucket_count of the monthly run (DAG default)")
    parser.add_argument("--queue", default="airbatch-cpu", choices=["airbatch-cpu", "airbatch-gpu"])
    parser.add_argument("--vcpus", type=int, default=2)
    args = parser.parse_args()
    if args.products < args.groups:
        raise SystemExit(f"--products ({args.products}) must be at least --groups ({args.groups})")

    from benchmarks.harness import DAGS, airflow_home, harness_line, start_execution_api, timed_run

    airflow_home("bench-packaging-inference",
                 [DAGS / "packaging_inference_monthly.py", DAGS / "packaging_inference_daily.py"])
    from localaws.stack import running_endpoint

    import pendulum

    from operators.pipelines.packaging import inventory
    from operators.pipelines.packaging.inference import register_approved_models

    per_group = args.products // args.groups
    sizes = {"groups": args.groups, "products_per_group": per_group, "new_per_day": args.daily_products,
             "start_date": START, "seed": 0}
    conf = {"dataset_groups": args.groups, "dataset_products_per_group": per_group,
            "dataset_new_products_per_day": args.daily_products, "dataset_start_date": START, "dataset_seed": 0,
            "queue": args.queue}
    with tempfile.TemporaryDirectory(prefix="packaging-inference-bench-") as scratch:
        root = Path(scratch) / "root"
        os.environ["DATA_ROOT"] = str(root)
        started = time.perf_counter()
        inventory.ensure(f"{root}/datasets/packaging_inventory", until="2026-03-03", **sizes)
        version = register_approved_models(inventory.true_models(args.groups), "bench-1", by="benchmark")
        print(f"generated {per_group * args.groups:,} + {args.daily_products:,} products in {args.groups:,} groups "
              f"and approved version {version} in {time.perf_counter() - started:.1f} s")

        figures = []
        with running_endpoint(vcpus=args.vcpus):
            from operators.kit.summary import format_task_times, task_times, xcom_value

            api_start_s = start_execution_api()
            for scope, run_after, extra in (("monthly", "2026-03-02T06:00:00", {"bucket_count": args.buckets}),
                                            ("daily", "2026-03-03T06:00:00", {})):
                dag_id = f"packaging_inference_{scope}"
                run_conf = {**conf, **{k: v for k, v in extra.items() if v is not None}}
                seconds, run = timed_run(DAGS / f"{dag_id}.py", logical_date=None,
                                         run_after=pendulum.parse(run_after), run_conf=run_conf)
                published = xcom_value(run.dag_id, run.run_id, "publish")
                fanout = xcom_value(run.dag_id, run.run_id, "summary")
                print(f"{dag_id} task times:")
                print(format_task_times(task_times(run.dag_id, run.run_id)))
                figures.append((scope, published["products"], fanout["batches"], seconds))

    print(harness_line(api_start_s))
    for scope, products, batches, seconds in figures:
        met = "yes" if seconds <= TARGETS_S[scope] else "no"
        scale = "" if products >= TARGET_SIZES[scope] else f" (target size {TARGET_SIZES[scope]:,})"
        print(f"{scope}: products={products:,} batches={batches} seconds={seconds:.1f} "
              f"target<={TARGETS_S[scope]}s{scale} met={met} products_per_s={products / seconds:,.0f} "
              f"vcpus={args.vcpus}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
