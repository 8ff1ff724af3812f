"""The shard operator's capacity helpers: throttling errors, RUNNABLE children, fallback queues."""
from __future__ import annotations

from botocore.exceptions import ClientError

from airflow.sdk.exceptions import AirflowException

from operators.kit.batch import fallback_queue, is_throttling, runnable_and_started


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
