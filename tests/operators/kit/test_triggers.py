"""The kit's triggers: each survives the trip through the triggerer's table (serialize, kwargs encrypted and read back,
the class imported from its classpath and built from them); against the local endpoint, the wait's event once its job
ends (never before the scheduler can have seen the deferral), its CAPACITY_WAIT event, and its job terminated when a
person kills the deferred task."""
from __future__ import annotations

import asyncio
import importlib
import inspect
import time

import botocore.client
import pytest

from airflow.triggers.base import BaseTrigger

from operators.kit import triggers
from operators.kit.job_states import FAILED, RUNNING, SUCCEEDED
from operators.kit.triggers import CAPACITY_WAIT, BatchJobWaitTrigger

from tests.operators.kit.batch_jobs import SLEEP_SCRIPT, submit, wait_for

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


def test_the_trigger_reports_a_job_stuck_runnable_and_leaves_the_failover_to_the_task(no_cpu_capacity, monkeypatch):
    aws = no_cpu_capacity
    job_id = aws.batch.submit_job(jobName="trigger-capacity", jobQueue="airbatch-cpu",
                                  jobDefinition="airbatch-worker-cpu", arrayProperties={"size": 3},
                                  containerOverrides={"command": ["python", "-c", "pass"]})["jobId"]
    trigger = BatchJobWaitTrigger(job_id=job_id, poll_interval=0.2, runnable_timeout_s=1.0)
    trigger.settle_s = 0.0

    # The event loop stays free while the trigger waits: no call that blocks it (a synchronous AWS call, a
    # sleep) runs on the loop's thread. Checked by what runs there, not by timing, which a busy machine stretches.
    blocking = []

    def on_the_loop(name, call):
        def recorded(*args, **kwargs):
            if asyncio._get_running_loop() is not None:
                blocking.append(name)
            return call(*args, **kwargs)
        return recorded

    monkeypatch.setattr(botocore.client.BaseClient, "_make_api_call",
                        on_the_loop("a synchronous AWS call", botocore.client.BaseClient._make_api_call))
    monkeypatch.setattr(time, "sleep", on_the_loop("time.sleep", time.sleep))

    async def first_event():
        polls = 0
        async with trigger.hook().async_calls() as batch:  # the async client the trigger's polls use
            polls += bool(await batch.describe_job(job_id))
        return await asyncio.wait_for(trigger.run().__anext__(), 30), polls

    started = time.monotonic()
    event, polls = asyncio.run(first_event())
    assert time.monotonic() - started >= 1.0 and polls == 1
    assert blocking == []
    payload = event.payload
    assert payload["status"] == CAPACITY_WAIT and payload["job_id"] == job_id
    assert payload["runnable"] == 3 and payload["waited_s"] >= 1.0 and payload["queue"] == "airbatch-cpu"
    # the trigger only observes: the job is still waiting, for the task to cancel and move
    assert aws.batch.describe_jobs(jobs=[job_id])["jobs"][0]["status"] in ("PENDING", "RUNNABLE")
    aws.batch.cancel_job(jobId=job_id, reason="test over")


def test_a_deferred_task_killed_by_a_person_terminates_its_job(local_aws):
    job_id = submit(local_aws, "trigger-kill", SLEEP_SCRIPT)
    trigger = BatchJobWaitTrigger(job_id=job_id, poll_interval=0.2)
    assert trigger.serialize()[0] == "operators.kit.triggers.BatchJobWaitTrigger"

    async def scenario():
        waiting = asyncio.ensure_future(trigger.run().__anext__())
        await asyncio.to_thread(wait_for, local_aws, job_id, (RUNNING,))
        assert not waiting.done()
        waiting.cancel()  # what the triggerer does, then it calls on_kill() on a user action
        await trigger.on_kill()

    asyncio.run(scenario())
    job = wait_for(local_aws, job_id, (FAILED,))
    assert "killed" in job["statusReason"]


def test_the_trigger_fires_once_the_job_ends(local_aws):
    job_id = submit(local_aws, "trigger-end", "pass")

    async def first_event():
        return await BatchJobWaitTrigger(job_id=job_id, poll_interval=0.2).run().__anext__()

    event = asyncio.run(first_event())
    assert event.payload["status"] == SUCCEEDED and event.payload["job_id"] == job_id


def test_the_trigger_does_not_fire_before_the_scheduler_can_have_seen_the_deferral(local_aws, monkeypatch):
    """A job that has ended at the first poll is reported only after `settle_s` since the trigger started."""
    job_id = submit(local_aws, "trigger-settle", "pass")
    wait_for(local_aws, job_id, (SUCCEEDED,))
    pauses = []
    real_sleep = asyncio.sleep

    async def recorded_sleep(seconds):
        pauses.append(seconds)
        await real_sleep(0)

    monkeypatch.setattr(triggers.asyncio, "sleep", recorded_sleep)
    trigger = BatchJobWaitTrigger(job_id=job_id, poll_interval=0.2)

    async def first_event():
        return await trigger.run().__anext__()

    event = asyncio.run(first_event())
    assert event.payload["status"] == SUCCEEDED
    assert len(pauses) == 1 and 0 < pauses[0] <= trigger.settle_s  # the rest of settle_s, then the event
