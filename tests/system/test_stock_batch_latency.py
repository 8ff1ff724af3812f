"""The provider's stock BatchOperator, BatchSensor and BatchJobTrigger against a local Batch that takes
seconds to start a job, as AWS does: each job is seen SUBMITTED, PENDING, RUNNABLE, STARTING, then
RUNNING, and a deferrable task defers while its job is still on its way (with no latency the job could
end before the task deferred, a path AWS never takes).
"""
from __future__ import annotations

import asyncio
import uuid

import pytest

from airflow.providers.amazon.aws.hooks.batch_client import BatchClientHook
from airflow.providers.amazon.aws.triggers.batch import BatchJobTrigger
from airflow.utils.state import DagRunState
from tests.localaws.test_batch_timing import WALK, StatusRecorder, start_latency
from tests.system.test_batch_smoke import load_dag

pytestmark = pytest.mark.system

#: seconds from submit to RUNNING: 0.5 s SUBMITTED, 0.5 s PENDING, 0.5 s RUNNABLE, 1 s STARTING
LATENCY = 2.5
JOB = {"command": ["python", "-c", "import time; time.sleep(1); print('stock job ran')"]}


def test_the_stock_trigger_fires_once_the_job_has_walked_to_succeeded(local_aws):
    with start_latency(LATENCY), StatusRecorder() as transitions:
        job_id = local_aws.batch.submit_job(jobName=f"stock-trigger-{uuid.uuid4().hex[:6]}", jobQueue="airbatch-cpu",
                                            jobDefinition="airbatch-worker-cpu", containerOverrides=JOB)["jobId"]
        trigger = BatchJobTrigger(job_id=job_id, aws_conn_id="aws_default", waiter_delay=1, waiter_max_attempts=120)

        async def first_event():
            async for event in trigger.run():
                return event

        event = asyncio.run(asyncio.wait_for(first_event(), timeout=180))
    assert event.payload == {"status": "success", "job_id": job_id}
    assert transitions.statuses(job_id) == WALK  # the trigger fired on SUCCEEDED, the job's last status


@pytest.mark.timeout(600)
def test_the_stock_operator_and_sensor_pass_each_way_they_wait(airflow_db, local_aws, monkeypatch, capfd):
    # The provider's sync wait sleeps 1-10 s before each phase; BatchClientHook's docstring says to tune these.
    monkeypatch.setattr(BatchClientHook, "DEFAULT_DELAY_MIN", 0)
    monkeypatch.setattr(BatchClientHook, "DEFAULT_DELAY_MAX", 0.5)
    prefix = f"stock-{uuid.uuid4().hex[:6]}"
    dag = load_dag("stock_batch_with_latency", folder="tests/fixture_dags")
    # the statuses as the endpoint set them: a poll would miss the array parent's half second SUBMITTED when busy
    with start_latency(LATENCY), StatusRecorder() as transitions:
        run = dag.test(run_conf={"prefix": prefix})
    output = capfd.readouterr().out
    assert run.state == DagRunState.SUCCESS, {ti.task_id: ti.state for ti in run.get_task_instances()}
    names = {job["jobName"]: job for job in local_aws.batch.list_jobs(
        jobQueue="airbatch-cpu", filters=[{"name": "JOB_NAME", "values": [f"{prefix}*"]}])["jobSummaryList"]}
    assert sorted(names) == sorted(f"{prefix}-{task}" for task in ("sync", "deferred", "array", "for_poke",
                                                                     "for_trigger"))
    for task in ("sync", "deferred", "for_poke", "for_trigger"):
        assert transitions.statuses(names[f"{prefix}-{task}"]["jobId"]) == WALK, task
    # an array parent, as on AWS: PENDING while its children run
    parent = names[f"{prefix}-array"]
    assert transitions.statuses(parent["jobId"]) == ["SUBMITTED", "PENDING", "SUCCEEDED"]
    assert parent["arrayProperties"]["size"] == 3 and parent["arrayProperties"]["statusSummary"]["SUCCEEDED"] == 3
    # the deferrable operator and sensor deferred (their job not ended yet) and resumed from the trigger's event
    assert output.count("Pausing task as DEFERRED.") == 2, output[-5000:]
    deferred, sensed = names[f"{prefix}-deferred"]["jobId"], names[f"{prefix}-for_trigger"]["jobId"]
    assert f"Job completed successfully for job_id: {deferred}" in output  # BatchOperator.execute_complete
    assert f"Batch Job {sensed} complete" in output  # BatchSensor.execute_complete
    assert "stock job ran" in output  # the sync operator's awslogs
