"""
### training_sweep: train many configurations at once, fire and forget

Trigger it from the form or the REST API with a **sweep spec**: `sweep` inline (a `grid` of values
per hyper-parameter, or a list of `configurations`, each with an `id`, `hyperparameters` and a
`resource_class` CPU or GPU), or `sweep_uri`, a JSON or CSV file of up to 100,000 configurations.
The form's default `sweep` is a small built-in grid (6 configurations, seconds), which gives way to
`sweep_uri` when that is set.

1. **prepare** checks the whole spec first (duplicate ids, unknown hyper-parameters, bad values,
   bad resource classes: each named with its configuration and field), fixes the data slice,
   reuses configurations already trained with the same data, code and parameters, and batches the
   rest per resource class.
2. **plan / run_shard**: AWS Batch array jobs on the CPU and GPU queues. Children RUNNABLE for
   `runnable_timeout_s` with none starting are a capacity shortage: the unstarted work moves to
   the queue's fallback queue. Throttled submissions are retried with backoff; lost hosts are
   retried by Batch.
3. **summary** writes the job history (`DATA_ROOT/history/`, DuckDB or Athena), the cost of the
   sweep's Batch jobs and the report: the leaderboard, failures by class and earlier sweeps, also
   in the run's **Run view** tab with a link to the report. **notify** sends one message per sweep
   (and one per failed configuration with `notify_each_failure`).

Triage and how-to: docs/sweeps.md.
"""
from __future__ import annotations

import pendulum

from operators.pipelines.sweep.pipeline import sweep_pipeline

# Airflow parses only files that mention "airflow" and "dag": this comment keeps this one in.
sweep_pipeline(
    "training_sweep",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    poll_interval=1,
    doc_md=__doc__,
    tags=["sweep", "training", "batch"],
)
