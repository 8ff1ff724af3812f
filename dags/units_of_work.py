"""
### units_of_work: the unit-of-work engine on its own, with the no-op workload

**prepare** validates the input against the workload's schema (a missing or mistyped column fails
here, before anything is submitted), quarantines bad rows and buckets units into `bucket_count`
batches. **plan** cuts the batches into shards. **run_shard** runs each shard as ONE AWS Batch
array job whose children take slices of the shard's pending batches. **summary** combines the
shards and writes the dead-letter list of failed units.

**Input**: `input_uri`, or, when empty, `units` generated units of `rows_per_unit` rows.

**Resume**: a batch is done when its done-marker exists for its cache key (content hash +
workload version + parameters). A retry, a clear or a new run computes only batches without one;
change `salt` (or any workload parameter) to recompute everything.

**Triage**: a failed shard's log lists the failed batches by failure class with the first error
of each, the failed children's Batch reason and log tail; its results file lists every batch.
"""
from __future__ import annotations

import pendulum

from operators.kit import unit_pipeline
from operators.pipelines.noop.source import GeneratedUnits

# Airflow parses only files that mention "airflow" and "dag": this comment keeps this one in.
unit_pipeline(
    "units_of_work",
    workload="noop",
    source=GeneratedUnits(),
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    poll_interval=1,
    doc_md=__doc__,
    tags=["engine", "batch"],
)
