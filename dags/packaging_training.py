"""
### packaging_training: a damage model per (package type, product group), weekly, approved before it is used

1. **dataset**: `input_uri` (CSV/Parquet labels), or, when empty, synthetic labels that grow week
   by week under `DATA_ROOT/datasets/packaging` (`dataset_*` params, with an optional drift).
2. **prepare**: the labels of the `lookback_days` days before the end of the run's week, checked
   against the packaging schema and bucketed by unit into batches of about `rows_per_batch`
   labels (50,000), at most `bucket_count` of them.
3. **plan / run_shard**: AWS Batch array jobs fit a regularised logistic regression per unit and
   validate it on the unit's latest `holdout_days` of labels. Batches already computed for the
   same labels, code version and parameters are not recomputed.
4. **evaluate**: median holdout AUC, log-loss and the share of units without a model, against the
   last approved version (AUC drop, log-loss increase, label-distribution shift, change in the
   number of labels and units); the `approve_*` / `reject_*` limits propose approve, review or reject.
5. **ask_reviewer**: between the limits (or always, with `review: always`) a person decides in the
   Airflow UI, under Required Actions.
6. **decide / publish / notify**: an approved version's models (every unit's coefficients, one
   Parquet file) go to `DATA_ROOT/published/packaging/current/` with an event on the Asset
   `packaging_models` carrying the version; a rejected one leaves the current model in place.

Backfill: `airflow backfill create --dag-id packaging_training --from-date A --to-date B`, with
`--dag-run-conf '{...}'` for run params; the DAG starts paused, and its backfill runs wait until it is
unpaused. The UI's Backfill dialog sends its params form only when "Override parameters on existing
runs" is ticked: without it every run uses the defaults (docs/architecture.md, "Backfills").
"""
from __future__ import annotations

from operators.kit import unit_pipeline, weekly_intervals
from operators.pipelines.packaging.evaluation import PackagingEvaluator
from operators.pipelines.packaging.source import PUBLISH_MODELS, SyntheticLabels

# Airflow parses only files that mention "airflow" and "dag": this comment keeps this one in.
unit_pipeline(
    "packaging_training",
    workload="packaging",
    evaluator=PackagingEvaluator(),
    model="packaging",
    source=SyntheticLabels(),
    publish=PUBLISH_MODELS,
    **weekly_intervals("2026-01-05", catchup=True),
    defaults={"bucket_count": 400, "rows_per_batch": 50_000},
    doc_md=__doc__,
    tags=["packaging", "training", "batch"],
)
