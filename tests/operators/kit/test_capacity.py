"""The shard operator's capacity helpers: throttling errors, RUNNABLE children, fallback queues, the capacity watch
and the trigger's side of it (its CAPACITY_WAIT event against the local endpoint)."""
from __future__ import annotations

import asyncio
import importlib
import time

import pytest
from botocore.exceptions import ClientError

from airflow.sdk.exceptions import AirflowException

from operators.kit.batch import fallback_queue, is_throttling, runnable_and_started
from operators.kit.triggers import CAPACITY_WAIT, BatchJobWaitTrigger, CapacityWatch


def client_error(code: str, message: str) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": message}}, "SubmitJob")


def test_throttling_is_recognised_also_inside_the_providers_airflow_exception():
    assert is_throttling(client_error("TooManyRequestsException", "Too Many Requests"))
    assert is_throttling(client_error("ClientException", "Too Many Requests"))
    assert not is_throttling(client_error("ClientException", "Job queue airbatch-x does not exist"))
    try:
        try:
            raise client_error("ClientException", "Rate exceeded")
        except ClientError as exc:
            raise AirflowException(exc)  # what BatchOperator.submit_job does
    except AirflowException as wrapped:
        assert is_throttling(wrapped)
    assert not is_throttling(ValueError("nope"))


def test_runnable_and_started_children():
    summary = {"SUBMITTED": 0, "PENDING": 0, "RUNNABLE": 3, "STARTING": 1, "RUNNING": 2, "SUCCEEDED": 4, "FAILED": 1}
    assert runnable_and_started({"status": "RUNNING", "arrayProperties": {"statusSummary": summary}}) == (3, 8)
    assert runnable_and_started({"status": "RUNNABLE"}) == (1, 0)
    assert runnable_and_started({"status": "RUNNING"}) == (0, 1)


def test_fallback_queues_come_from_the_provisioning_spec():
    assert fallback_queue("airbatch-cpu") == "airbatch-cpu-ondemand"
    assert fallback_queue("airbatch-gpu") == "airbatch-gpu-ondemand"
    assert fallback_queue("airbatch-cpu-ondemand") is None and fallback_queue("unknown") is None


def array(runnable: int, running: int = 0, succeeded: int = 0) -> dict:
    return {"status": "RUNNING" if running or succeeded else "RUNNABLE", "arrayProperties": {"statusSummary": {
        "RUNNABLE": runnable, "RUNNING": running, "SUCCEEDED": succeeded}}}


def test_the_capacity_watch_fires_only_when_nothing_starts_for_its_timeout():
    watch = CapacityWatch(10)
    assert watch.observe(array(4), now=100) is None  # the clock starts
    assert watch.observe(array(4), now=109.9) is None
    assert watch.observe(array(4), now=110) == (4, 10)
    busy = CapacityWatch(10)  # children wait behind running ones that end and make room: not a shortage
    for step in range(5):
        assert busy.observe(array(4 - step, running=1, succeeded=step), now=100 + 8 * step) is None
    idle = CapacityWatch(10)  # nothing RUNNABLE: never
    assert idle.observe(array(0, running=2), now=0) is None and idle.observe(array(0, running=2), now=100) is None
    single = CapacityWatch(5)  # a job alone counts as one child
    assert single.observe({"status": "RUNNABLE"}, now=0) is None
    assert single.observe({"status": "RUNNABLE"}, now=5) == (1, 5)


def test_the_trigger_survives_its_serialize_round_trip_with_the_watch():
    trigger = BatchJobWaitTrigger(job_id="j-1", aws_conn_id="aws_default", region_name="us-east-1", poll_interval=2,
                                  terminate_on_kill=True, deadline=1234.5, runnable_timeout_s=30.0)
    path, kwargs = trigger.serialize()
    module, name = path.rsplit(".", 1)
    again = getattr(importlib.import_module(module), name)(**kwargs)  # what the triggerer does
    assert again.serialize() == (path, kwargs) and kwargs["runnable_timeout_s"] == 30.0
    assert BatchJobWaitTrigger(job_id="j-2").serialize()[1]["runnable_timeout_s"] is None


@pytest.fixture
def no_cpu_capacity(local_aws):
    """airbatch-cpu's compute environment places nothing (the local endpoint's shortage: DISABLED) during the test."""
    local_aws.batch.update_compute_environment(computeEnvironment="airbatch-cpu", state="DISABLED")
    try:
        yield local_aws
    finally:
        local_aws.batch.update_compute_environment(computeEnvironment="airbatch-cpu", state="ENABLED")


def test_the_trigger_reports_a_job_stuck_runnable_and_leaves_the_failover_to_the_task(no_cpu_capacity):
    aws = no_cpu_capacity
    job_id = aws.batch.submit_job(jobName="trigger-capacity", jobQueue="airbatch-cpu",
                                  jobDefinition="airbatch-worker-cpu", arrayProperties={"size": 3},
                                  containerOverrides={"command": ["python", "-c", "pass"]})["jobId"]
    trigger = BatchJobWaitTrigger(job_id=job_id, poll_interval=0.2, runnable_timeout_s=1.0)
    trigger.settle_s = 0.0

    async def first_event():
        beats = []  # the event loop stays free while the trigger waits: its polls never block it

        async def heartbeat():
            while True:
                beats.append(time.monotonic())
                await asyncio.sleep(0.05)

        beating = asyncio.ensure_future(heartbeat())
        try:
            return await asyncio.wait_for(trigger.run().__anext__(), 30), beats
        finally:
            beating.cancel()

    started = time.monotonic()
    event, beats = asyncio.run(first_event())
    assert time.monotonic() - started >= 1.0
    assert max(b - a for a, b in zip(beats, beats[1:])) < 0.5
    payload = event.payload
    assert payload["status"] == CAPACITY_WAIT and payload["job_id"] == job_id
    assert payload["runnable"] == 3 and payload["waited_s"] >= 1.0 and payload["queue"] == "airbatch-cpu"
    # the trigger only observes: the job is still waiting, for the task to cancel and move
    assert aws.batch.describe_jobs(jobs=[job_id])["jobs"][0]["status"] in ("PENDING", "RUNNABLE")
    aws.batch.cancel_job(jobId=job_id, reason="test over")
