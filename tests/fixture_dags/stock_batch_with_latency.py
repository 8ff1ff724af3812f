"""The provider's BatchOperator and BatchSensor exactly as shipped, each way they wait: the operator sync and
deferrable, the sensor poking and deferrable, and an array job (used by tests/system/test_stock_batch_latency.py,
against an endpoint that takes seconds to start a job, as AWS does).

Every job is named `<params.prefix>-<task>`, so that a test can watch each one's statuses.
"""
from __future__ import annotations

from datetime import timedelta

import pendulum

from airflow.providers.amazon.aws.operators.batch import BatchOperator
from airflow.providers.amazon.aws.sensors.batch import BatchSensor
from airflow.sdk import Param, dag

QUEUE, DEFINITION = "airbatch-cpu", "airbatch-worker-cpu"
JOB = {"command": ["python", "-c", "import time; time.sleep(1); print('stock job ran')"]}


@dag(schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC"), catchup=False,
     params={"prefix": Param("stock", type="string")})
def stock_batch_with_latency():
    def job(task_id: str, **kwargs) -> BatchOperator:
        return BatchOperator(task_id=task_id, job_name=f"{{{{ params.prefix }}}}-{task_id}", job_queue=QUEUE,
                             job_definition=DEFINITION, container_overrides=JOB, poll_interval=1, **kwargs)

    sync = job("sync", awslogs_enabled=True, awslogs_fetch_interval=timedelta(seconds=1))
    deferred = job("deferred", deferrable=True)
    array = job("array", array_properties={"size": 3})
    for_poke = job("for_poke", wait_for_completion=False)
    poke = BatchSensor(task_id="poke", job_id="{{ ti.xcom_pull(task_ids='for_poke') }}", poke_interval=0.5,
                       timeout=300)
    for_trigger = job("for_trigger", wait_for_completion=False)
    trigger = BatchSensor(task_id="trigger", job_id="{{ ti.xcom_pull(task_ids='for_trigger') }}", deferrable=True,
                          poke_interval=1, max_retries=300)
    sync >> deferred >> array >> for_poke >> poke >> for_trigger >> trigger


stock_batch_with_latency()
