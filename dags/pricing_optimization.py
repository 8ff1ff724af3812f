"""
### pricing_optimization: a price per (segment, location, product), weekly, approved before it is used

1. **dataset**: `input_uri` (CSV/Parquet, partitioned by `date=`), or, when that is empty, a
   synthetic dataset generated once under `DATA_ROOT/datasets/pricing` (`dataset_*` params).
2. **prepare**: the run's window, the `lookback_days` days before the end of its data interval
   (weekly, Monday to Monday), validated against the pricing schema and bucketed into batches of
   about `rows_per_batch` rows (50,000), at most `bucket_count` of them.
3. **plan / run_shard**: one AWS Batch array job per shard on `queue` (GPU by default). Batches
   whose output exists for the same data, code version and workload parameters are not recomputed.
4. **collect / evaluate**: metrics over all units (holdout MAPE, coverage, degenerate share,
   profit uplift, price changes, input shift), compared with the last approved version; the
   proposal (approve, reject or review) follows the `approve_*` and `reject_*` limits. The version
   is registered as PendingManualApproval with an HTML report.
5. **ask_reviewer**: a person decides in the Airflow UI (Required Actions) when the proposal is
   review, or always with `review: always`.
6. **decide / publish / notify**: an approved version's prices go to
   `DATA_ROOT/published/pricing/current/` and the Asset `pricing_current_prices` is updated;
   notify sends the summary. A failed task notifies with its first error and its failed units.

Backfill: `airflow backfill create --dag-id pricing_optimization --from-date A --to-date B`, with
`--dag-run-conf '{...}'` for run params; the DAG starts paused, and its backfill runs wait until it is
unpaused. The UI's Backfill dialog sends its params form only when "Override parameters on existing
runs" is ticked: without it every run uses the defaults (docs/architecture.md, "Backfills").
"""
from __future__ import annotations

from operators.kit import unit_pipeline, weekly_intervals
from operators.pipelines.pricing.evaluation import PricingEvaluator
from operators.pipelines.pricing.source import PUBLISH_PRICES, SyntheticPricingData

# Airflow parses only files that mention "airflow" and "dag": this comment keeps this one in.
unit_pipeline(
    "pricing_optimization",
    workload="pricing",
    evaluator=PricingEvaluator(),
    model="pricing",
    source=SyntheticPricingData(),
    publish=PUBLISH_PRICES,
    **weekly_intervals("2026-01-05"),
    defaults={"queue": "airbatch-gpu", "holdout_days": 7, "rows_per_batch": 50_000},
    doc_md=__doc__,
    tags=["pricing", "batch"],
)
