"""The provider's BatchOperator exactly as shipped, mapped over one shard: an array job whose
children each write their own file (used by tests/system/test_batch_smoke.py). The job's environment names
the DATA_ROOT whose outputs/ folder it writes to, as a stock operator's user does on the local endpoint."""
from __future__ import annotations

from datetime import timedelta

import pendulum

from airflow.providers.amazon.aws.operators.batch import BatchOperator
from airflow.sdk import Param, dag, task


@dag(schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC"), catchup=False,
     params={"data_root": Param("", type="string"), "out": Param("", type="string"),
             "children": Param(120, type="integer")})
def unchanged_batch_operator():
    @task
    def shards(params=None):
        return [{"job_name": "unchanged-op", "array_properties": {"size": params["children"]},
                 "container_overrides": {"command": ["python", "-m", "batch_worker.smoke", "--sleep", "0.05",
                                                     "--out", params["out"]],
                                         "environment": [{"name": "DATA_ROOT", "value": params["data_root"]}]}}]

    BatchOperator.partial(task_id="run_shard", job_queue="airbatch-cpu", job_definition="airbatch-worker-cpu",
                          awslogs_enabled=True, awslogs_fetch_interval=timedelta(seconds=1)).expand_kwargs(shards())


unchanged_batch_operator()
