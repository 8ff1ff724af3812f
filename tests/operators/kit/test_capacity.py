"""The shard operator's capacity helpers: throttling errors, RUNNABLE children, fallback queues and the capacity watch
(the trigger's side of it, its CAPACITY_WAIT event, is in test_triggers.py)."""
from __future__ import annotations

from botocore.exceptions import ClientError

from airflow.sdk.exceptions import AirflowException

from operators.kit.batch import fallback_queue, is_throttling
from operators.kit.triggers import CapacityWatch, runnable_and_started


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
