"""
### units_of_work: the unit-of-work engine on its own, with the no-op workload

**prepare** validates the input against the workload's schema (a missing or mistyped column fails
here, before anything is submitted), quarantines bad rows and buckets units into `bucket_count`
batches. **plan** cuts the batches into shards. **run_shard** runs each shard as ONE AWS Batch
array job whose children take slices of the shard's pending batches. **summary** combines the
shards and writes the dead-letter list of failed units.

**Resume**: a batch is done when its done-marker exists for its cache key (content hash +
workload version + parameters). A retry, a clear or a new run computes only batches without one;
change `salt` (or any workload parameter) to recompute everything.

**Params**: `input_uri` (a CSV/Parquet file or folder, local or s3://; empty generates `units`
units of `rows_per_unit` rows), `bucket_count` (1..10000), `batches_per_shard`, `batches_per_child`
(0: the environment's default), `min_success_ratio`, `sleep_s` (work per batch), `fail_units`
(unit ids whose batches fail as bad data), `salt`, `queue`, `shard_timeout_minutes` (a shard task
still waiting then terminates its Batch job and fails).

**Triage**: a failed shard's log lists the failed batches by failure class with the first error
of each, the failed children's Batch reason and log tail; its results file lists every batch.
"""
from __future__ import annotations


import pendulum

from airflow.sdk import Param, dag, task

from operators.kit.batch import run_shards

WORKLOAD = "noop"


@dag(
    dag_id="units_of_work",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    doc_md=__doc__,
    tags=["engine", "batch"],
    params={
        "input_uri": Param("", type="string", description="CSV/Parquet input; empty generates `units` units"),
        "units": Param(3000, type="integer", minimum=1, maximum=10_000_000),
        "rows_per_unit": Param(3, type="integer", minimum=1, maximum=1000),
        "bucket_count": Param(3000, type="integer", minimum=1, maximum=10_000),
        "batches_per_shard": Param(1000, type="integer", minimum=1, maximum=10_000),
        "batches_per_child": Param(0, type="integer", minimum=0, maximum=10_000,
                                   description="0: the environment's default (BATCH_MAX_CHILDREN)"),
        "min_success_ratio": Param(1.0, type="number", minimum=0, maximum=1),
        "max_quarantined_share": Param(0.1, type="number", minimum=0, maximum=1,
                                       description="prepare fails when a larger share of the rows is quarantined"),
        "sleep_s": Param(0.0, type="number", minimum=0, maximum=3600),
        "fail_units": Param([], type="array", items={"type": "string"}),
        "salt": Param("", type="string"),
        "queue": Param("airbatch-cpu", type="string", enum=["airbatch-cpu", "airbatch-gpu"]),
        "shard_timeout_minutes": Param(360, type="number", exclusiveMinimum=0, maximum=7 * 24 * 60,
                                       description="a shard still running then has its Batch job terminated"),
    },
)
def units_of_work():
    @task
    def prepare(params=None, dag=None, run_id=None) -> dict:
        from batch_worker.workloads import get_workload

        from operators.kit import engine, prep
        from operators.pipelines.noop import noop_data

        root = engine.own_run_root(dag.dag_id, run_id)
        input_uri = params["input_uri"]
        if not input_uri:
            target = f"{root}/input/noop.parquet"
            input_uri = noop_data.write(target, params["units"], params["rows_per_unit"],
                                        engine.options_for(target, "aws_default"))
        out = f"{root}/prep"
        result = prep.prepare_configured(input_uri, get_workload(WORKLOAD).schema, out, params["bucket_count"],
                              storage_options=engine.options_for(out, "aws_default"),
                              max_quarantined_share=params["max_quarantined_share"])
        print(f"prepared {result.rows_ok} rows of {result.units} units into {result.batches} batches; "
              f"{result.rows_quarantined} rows quarantined {result.quarantined_by_reason}")
        return {**result.to_dict(), "run_root": root, "input_uri": input_uri}

    @task
    def plan(prepared: dict, params=None) -> list[dict]:
        from operators.kit import engine

        shards = engine.plan_shards(
            prepared["manifest_uri"], workload=WORKLOAD,
            params={"sleep_s": params["sleep_s"], "fail_units": params["fail_units"], "salt": params["salt"]},
            out_root=engine.output_root(WORKLOAD), run_dir=prepared["run_root"], queue=params["queue"],
            batches_per_shard=params["batches_per_shard"], min_success_ratio=params["min_success_ratio"],
            batches_per_child=params["batches_per_child"] or None, timeout_minutes=params["shard_timeout_minutes"])
        print(f"{prepared['batches']} batches in {len(shards)} shard(s)")
        return shards

    @task
    def summary(shard_summaries, prepared: dict) -> dict:
        from batch_worker.workloads import get_workload

        from operators.kit import engine

        combined = engine.combine(list(shard_summaries), unit_key=get_workload(WORKLOAD).schema.unit_key,
                                  run_dir=prepared["run_root"])
        return {"rows_in": prepared["rows_in"], "rows_quarantined": prepared["rows_quarantined"],
                "quarantined_by_reason": prepared["quarantined_by_reason"], **combined}

    prepared = prepare()
    shards = run_shards(plan(prepared), poll_interval=1)
    summary(shards.output, prepared)


units_of_work()
