"""The kit's Batch hook against the real local endpoint: descriptions (None for an unknown job, 100 ids a call, array
children), statuses, failed children by index, a log's tail, terminate and cancel, the trigger's async calls, and
which endpoint the connection names."""
from __future__ import annotations

import asyncio

import pytest

from operators.kit.batch_hook import DESCRIBE_JOBS_MAX, HouseBatchHook
from operators.kit.job_states import FAILED, RUNNABLE, RUNNING, SUCCEEDED

from tests.operators.kit.batch_jobs import SLEEP_SCRIPT, submit, wait_for

UNKNOWN_JOB = "00000000-0000-0000-0000-000000000000"


@pytest.fixture
def hook(local_aws) -> HouseBatchHook:
    return HouseBatchHook(aws_conn_id="aws_default")


def submit_and_end(local_aws, name: str) -> str:
    job_id = submit(local_aws, name, "pass", size=2)
    wait_for(local_aws, job_id)
    return job_id


def describe_calls(hook: HouseBatchHook) -> list[int]:
    """The number of job ids of each DescribeJobs call the hook makes from now on."""
    calls: list[int] = []
    hook.client.meta.events.register("provide-client-params.batch.DescribeJobs",
                                     lambda params, **_: calls.append(len(params["jobs"])))
    return calls


def test_a_job_is_described_and_an_unknown_one_is_none(local_aws, hook):
    job_id = submit(local_aws, "hook-describe", "pass")
    wait_for(local_aws, job_id)
    job = hook.describe_job(job_id)
    assert job["jobId"] == job_id and job["status"] == SUCCEEDED and job["jobName"] == "hook-describe"
    assert hook.describe_job(UNKNOWN_JOB) is None


def test_many_jobs_are_described_a_hundred_ids_a_call_and_unknown_ones_left_out(local_aws, hook):
    job_id = submit(local_aws, "hook-statuses", "pass")
    wait_for(local_aws, job_id)
    unknown = [f"00000000-0000-0000-0000-{n:012d}" for n in range(1, DESCRIBE_JOBS_MAX + 50)]
    calls = describe_calls(hook)
    assert hook.job_statuses([*unknown[:70], job_id, *unknown[70:]]) == {job_id: SUCCEEDED}
    assert calls == [DESCRIBE_JOBS_MAX, 50]
    assert [job["jobId"] for job in hook.describe_jobs([job_id, UNKNOWN_JOB])] == [job_id]
    assert hook.describe_jobs([]) == [] and hook.job_statuses([]) == {}


def test_an_array_job_is_described_with_its_children_after_it(local_aws, hook):
    parent = submit(local_aws, "hook-children", "pass", size=3)
    plain = submit(local_aws, "hook-plain", "pass")
    wait_for(local_aws, parent)
    wait_for(local_aws, plain)
    described = hook.describe_with_children([parent, plain])
    assert [job["jobId"] for job in described] == [parent, plain, f"{parent}:0", f"{parent}:1", f"{parent}:2"]
    assert all(job["status"] == SUCCEEDED for job in described)


def test_the_failed_children_of_an_array_job_come_in_index_order(local_aws, hook):
    odd_fail = "import os, sys; sys.exit(int(os.environ['AWS_BATCH_JOB_ARRAY_INDEX']) % 2)"
    parent = submit(local_aws, "hook-failed-children", odd_fail, size=6)
    assert wait_for(local_aws, parent)["status"] == FAILED
    failed = hook.failed_children(parent)
    assert [c["arrayProperties"]["index"] for c in failed] == [1, 3, 5]
    assert [c["jobId"] for c in failed] == [f"{parent}:1", f"{parent}:3", f"{parent}:5"]
    assert all(c["status"] == FAILED for c in failed)
    # the listing stops at the first page past the number asked for: here the one page, all of them
    assert [c["arrayProperties"]["index"] for c in hook.failed_children(parent, more_than=1)] == [1, 3, 5]
    assert hook.failed_children(submit_and_end(local_aws, "hook-no-failures")) == []


def test_a_logs_tail_is_its_last_lines_and_a_missing_log_is_none(local_aws, hook):
    job_id = submit(local_aws, "hook-log", "for n in range(60): print(f'line {n}')")
    job = wait_for(local_aws, job_id)
    stream = job["container"]["logStreamName"]
    assert hook.log_tail(stream, 40) == [f"line {n}" for n in range(20, 60)]
    assert hook.log_tail(stream, 3) == ["line 57", "line 58", "line 59"]
    assert hook.log_tail("airbatch-worker-cpu/default/no-such-stream", 5) is None


def test_terminate_ends_a_running_job_and_cancel_a_job_that_has_not_started(local_aws, hook):
    running = submit(local_aws, "hook-terminate", SLEEP_SCRIPT)
    wait_for(local_aws, running, (RUNNING,))
    hook.terminate(running, reason="stopped by the hook test")
    ended = wait_for(local_aws, running)
    assert ended["status"] == FAILED and ended["statusReason"] == "stopped by the hook test"

    local_aws.batch.update_compute_environment(computeEnvironment="airbatch-cpu", state="DISABLED")
    try:
        waiting = submit(local_aws, "hook-cancel", "pass")
        wait_for(local_aws, waiting, (RUNNABLE,))
        hook.cancel(waiting, reason="cancelled by the hook test")
        cancelled = wait_for(local_aws, waiting)
    finally:
        local_aws.batch.update_compute_environment(computeEnvironment="airbatch-cpu", state="ENABLED")
    assert cancelled["status"] == FAILED and cancelled["statusReason"] == "cancelled by the hook test"
    assert not cancelled.get("attempts")  # it never ran


def test_the_async_calls_describe_and_terminate_on_one_client(local_aws, hook):
    job_id = submit(local_aws, "hook-async", SLEEP_SCRIPT)
    wait_for(local_aws, job_id, (RUNNING,))

    async def scenario():
        async with hook.async_calls() as batch:
            seen = await batch.describe_job(job_id)
            missing = await batch.describe_job(UNKNOWN_JOB)
            await batch.terminate(job_id, reason="stopped by the async hook test")
        return seen, missing

    seen, missing = asyncio.run(scenario())
    assert seen["jobId"] == job_id and seen["status"] == RUNNING and missing is None
    assert wait_for(local_aws, job_id)["statusReason"] == "stopped by the async hook test"


def test_the_hook_knows_the_local_endpoint_from_aws(local_aws, hook, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_AWS_PLAIN", '{"conn_type": "aws", "extra": {"region_name": "eu-west-1"}}')
    assert hook.on_other_endpoint()
    assert not HouseBatchHook(aws_conn_id="aws_plain").on_other_endpoint()
