"""The house Batch operators through the real local endpoint: one readable log line per Batch call, never boto's raw
answers; their links know which endpoint they are on; a task killed while it waits terminates its job. (Their
capacity helpers: test_capacity.py.)"""
from __future__ import annotations

import time

import pytest

from operators.kit.job_states import FAILED, RUNNING

from tests.operators.kit.batch_jobs import SLEEP_SCRIPT, submit, wait_for


def logged(entries: list[dict]) -> list[str]:
    """The captured log lines as the task log shows them (the message with its arguments)."""
    lines = []
    for entry in entries:
        event, args = entry.get("event"), entry.get("positional_args") or ()
        lines.append(str(event) % args if args else str(event))
    return lines


@pytest.mark.system
def test_a_batch_jobs_log_names_the_job_in_one_line_without_the_api_answers(local_aws, data_root):
    from structlog.testing import capture_logs

    from operators.kit import engine
    from operators.kit.batch import HouseBatchOperator

    out = data_root / "outputs" / "log-lines"
    operator = HouseBatchOperator(
        task_id="run_shard", job_name="log-lines", job_queue="airbatch-cpu",
        job_definition=engine.JOB_DEFINITIONS["airbatch-cpu"], array_properties={"size": 2},
        container_overrides={"command": ["python", "-m", "batch_worker.smoke", "--out", str(out)]}, poll_interval=1)
    with capture_logs() as entries:
        operator.submit_job({})  # no task instance: the provider's link is not persisted, nothing else changes
        job = operator.wait_until_ended(operator.job_id, deadline=time.time() + 120)
        assert job["status"] == "SUCCEEDED", job.get("statusReason")
        assert operator.hook.check_job_success(operator.job_id)  # the provider's deferrable path logs this
        operator.log.info("AWS Batch job (%s) terminated: %s", operator.job_id, {"ResponseMetadata": {}})
    lines = logged(entries)
    text = "\n".join(lines)
    assert not [line for line in lines if "ResponseMetadata" in line or "{'" in line or "jobArn" in line], text
    assert (f"AWS Batch job {operator.job_id} submitted: name log-lines, queue airbatch-cpu, array of 2"
            in lines), text
    [succeeded] = [line for line in lines if line.startswith(f"AWS Batch job {operator.job_id} succeeded: ")]
    assert succeeded == (f"AWS Batch job {operator.job_id} succeeded: name log-lines, queue airbatch-cpu, "
                         "status SUCCEEDED, array of 2 (2 SUCCEEDED)")
    # the overrides name what they set, not their values (the environment's DATA_ROOT is the house operator's)
    assert "AWS Batch job - container overrides: command of 5 words; environment DATA_ROOT" in lines, text
    assert "AWS Batch job - array of 2 children" in lines
    assert f"AWS Batch job {operator.job_id} terminated" in lines


@pytest.mark.system
def test_the_links_know_the_local_endpoint_from_aws(local_aws, monkeypatch):
    """On the local endpoint the Batch links open the run view's job page (tests/plugins/test_run_view.py); on AWS
    (a connection without an endpoint) they stay the provider's console links."""
    from operators.kit.batch import HouseBatchOperator, JobDetailsLink, on_other_endpoint

    monkeypatch.setenv("AIRFLOW_CONN_AWS_PLAIN", '{"conn_type": "aws", "extra": {"region_name": "eu-west-1"}}')
    local = HouseBatchOperator(task_id="t", job_name="j", job_queue="q", job_definition="d")
    on_aws = HouseBatchOperator(task_id="t", job_name="j", job_queue="q", job_definition="d", aws_conn_id="aws_plain")
    assert on_other_endpoint(local) and not on_other_endpoint(on_aws)
    assert {type(link).__name__ for link in HouseBatchOperator.operator_extra_links} == {
        "JobDetailsLink", "JobDefinitionLink", "JobQueueLink", "JobLogLink"}
    assert JobDetailsLink().format_link(region_name="eu-west-1", aws_domain="aws.amazon.com", job_id="j-1") == \
        "https://console.aws.amazon.com/batch/home?region=eu-west-1#jobs/detail/j-1"  # the provider's, on AWS


def test_a_waiting_task_killed_in_sync_mode_terminates_its_job(local_aws):
    from operators.kit.batch import UnitsOfWorkOperator

    op = UnitsOfWorkOperator(task_id="kill", shard={}, job_queue="airbatch-cpu",
                             job_definition="airbatch-worker-cpu")
    op.on_kill()  # nothing submitted yet: nothing to terminate, no error
    op.job_id = submit(local_aws, "sync-kill", SLEEP_SCRIPT)
    wait_for(local_aws, op.job_id, (RUNNING,))
    op.on_kill()
    assert wait_for(local_aws, op.job_id, (FAILED,))["statusReason"] == "Task killed by the user"
