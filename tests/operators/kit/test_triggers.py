"""The kit's triggers: each survives the trip through the triggerer's table (serialize, kwargs encrypted and read back,
the class imported from its classpath and built from them), and the wait's CAPACITY_WAIT event against the local
endpoint. Their kill and end events: test_engine.py."""
from __future__ import annotations

import asyncio
import importlib
import inspect
import time

import pytest

from airflow.triggers.base import BaseTrigger

from operators.kit import triggers
from operators.kit.triggers import CAPACITY_WAIT, BatchJobWaitTrigger

#: Each trigger of operators/kit/triggers.py, built as its task builds it: every argument given, and only the
#: required ones.
EXAMPLES = {
    "BatchJobWaitTrigger": [
        dict(job_id="j-1", aws_conn_id="aws_default", region_name="us-east-1", poll_interval=2,
             terminate_on_kill=False, deadline=1234.5, runnable_timeout_s=30.0),
        dict(job_id="j-2"),
    ],
}


def module_triggers() -> dict[str, type[BaseTrigger]]:
    return {name: cls for name, cls in inspect.getmembers(triggers, inspect.isclass)
            if issubclass(cls, BaseTrigger) and cls.__module__ == triggers.__name__}


def as_the_triggerer_rebuilds(trigger: BaseTrigger) -> BaseTrigger:
    """What the triggerer runs for a deferred task's trigger: the row the task wrote (kwargs encrypted) read back,
    the class imported from its classpath and called with the kwargs."""
    from airflow.models.trigger import Trigger
    from airflow.serialization.decoders import smart_decode_trigger_kwargs

    row = Trigger.from_object(trigger)
    stored = Trigger._decrypt_kwargs(row.encrypted_kwargs)
    kwargs = {key: smart_decode_trigger_kwargs(value) for key, value in stored.items()}
    module, name = row.classpath.rsplit(".", 1)
    return getattr(importlib.import_module(module), name)(**kwargs)


def test_every_trigger_has_examples_for_its_round_trip():
    assert set(module_triggers()) == set(EXAMPLES), "give each trigger of operators/kit/triggers.py its EXAMPLES"


@pytest.mark.parametrize("name, kwargs", [(name, kwargs) for name, examples in EXAMPLES.items()
                                          for kwargs in examples])
def test_a_trigger_rebuilt_by_the_triggerer_serializes_as_the_one_the_task_deferred_with(name, kwargs):
    trigger = module_triggers()[name](**kwargs)
    classpath, serialized = trigger.serialize()
    assert classpath == f"{triggers.__name__}.{name}"
    assert {key: serialized[key] for key in kwargs} == kwargs  # nothing the task gave is lost or changed
    again = as_the_triggerer_rebuilds(trigger)
    assert type(again) is type(trigger)
    assert again.serialize() == (classpath, serialized)


def test_the_waits_defaults_survive_the_round_trip():
    _, serialized = as_the_triggerer_rebuilds(BatchJobWaitTrigger(job_id="j-2")).serialize()
    assert serialized == {"job_id": "j-2", "aws_conn_id": "aws_default", "region_name": None, "poll_interval": 10,
                          "terminate_on_kill": True, "deadline": None, "runnable_timeout_s": None}


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

    async def warm_up():
        async with trigger.hook().async_calls() as batch:
            await batch.describe_job(job_id)

    # A process's first async client loads aiobotocore's modules (on a busy machine, longer than the beat checked
    # below): a cost of the triggerer's start, not of a poll.
    asyncio.run(warm_up())

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
