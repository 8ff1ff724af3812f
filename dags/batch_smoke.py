"""
### batch_smoke: proves the stack end to end

Plans a few shards, then runs one AWS Batch **array job per shard** through dynamic task mapping.
Every child writes `child-NNNNN.json` under `DATA_ROOT/outputs/batch_smoke/<run id>/shard-<n>/`, so a look
at that folder shows which children really ran.

**Params**: `shards` (mapped task instances), `children` (array size per shard, 2..10000; 1 submits
a plain job), `sleep_s` (seconds each child works), `fail_index` (an array index that fails on
purpose, below `children`; -1 for none), `queue` (`airbatch-cpu` or `airbatch-gpu`). `plan` refuses
a conf key the DAG does not have (naming the closest param) and a `fail_index` no child has, before
any job is submitted.

**Triage**: a failed shard's log names the failed children, their reason and the tail of their log.
"""
from __future__ import annotations

import os
from pathlib import Path

import pendulum

from airflow.sdk import Param, dag

from operators.kit import check_conf, dag_params, stage
from operators.kit.batch import HouseBatchOperator


def output_folder(run_id: str) -> str:
    from operators.kit.engine import safe_name

    # under outputs/: the one prefix a job's role may write (config/batch_resources.json)
    return f"{os.environ.get('DATA_ROOT', '.data')}/outputs/batch_smoke/{safe_name(run_id)}"


@dag(
    dag_id="batch_smoke",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    doc_md=__doc__,
    tags=["smoke", "batch"],
    params=dag_params({
        "shards": Param(2, type="integer", minimum=1, maximum=100, description="shards: one mapped task and one "
                                                                               "Batch job each"),
        "children": Param(50, type="integer", minimum=1, maximum=10000,
                          description="array size per shard (2..10000); 1 submits a plain job"),
        "sleep_s": Param(0.0, type="number", minimum=0, maximum=3600, description="seconds each child works"),
        "fail_index": Param(-1, type="integer", minimum=-1, maximum=9999,
                            description="an array index that fails on purpose; -1: none"),
        "queue": Param("airbatch-cpu", type="string", enum=["airbatch-cpu", "airbatch-gpu"],
                       description="the AWS Batch job queue"),
    }),
)
def batch_smoke():
    @stage()
    def plan(params=None, dag=None, dag_run=None, run_id=None) -> list[dict]:
        from operators.kit import engine

        check_conf(dag.dag_id, dag_run.conf, dag.params)  # before any job is submitted
        if params["fail_index"] >= params["children"]:
            raise ValueError(f"fail_index {params['fail_index']} is not an index of a shard of children="
                             f"{params['children']} (0..{params['children'] - 1}): no child would fail; give an "
                             "index below children, or -1 for none")
        out = output_folder(run_id)
        command = ["python", "-m", "batch_worker.smoke", "--sleep", str(params["sleep_s"]),
                   "--fail-index", str(params["fail_index"])]
        shards = []
        for shard in range(params["shards"]):
            size = params["children"]
            shards.append({
                "job_name": f"batch-smoke-shard-{shard}",
                "job_queue": params["queue"],
                "job_definition": engine.JOB_DEFINITIONS[params["queue"]],
                "array_properties": {"size": size} if size > 1 else {},
                "container_overrides": {"command": [*command, "--out", f"{out}/shard-{shard}"]},
            })
        return shards

    @stage()
    def summary(job_ids, params=None, run_id=None) -> dict:
        out = Path(output_folder(run_id))
        written = sorted(out.rglob("child-*.json"))
        return {"shards": params["shards"], "children_per_shard": params["children"],
                "child_files_written": len(written), "batch_job_ids": list(job_ids), "output": str(out)}

    shards = HouseBatchOperator.partial(
        task_id="run_shard",
        poll_interval=2,
        map_index_template="{{ task.job_name }}",
    ).expand_kwargs(plan())
    summary(shards.output)


batch_smoke()
