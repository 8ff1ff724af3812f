"""A restart of the local endpoint in the middle of a run: the shard's retry (the path a clear takes) finishes it.

The endpoint keeps Batch state in memory, so a restarted endpoint process knows no job, queue or job
definition until it provisions again at start. Here the in-process endpoint is stopped (its jobs
terminated), its Batch state dropped as a new process would have it, and started again on the same
port with the same keys.
"""
from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
from moto.batch.models import batch_backends

from airflow.utils.state import DagRunState
from tests.system.test_units_of_work import outputs, run_dag, task_instances, worker_pids, xcom

pytestmark = pytest.mark.system


def restart_once_workers_run(local_aws, restarted: threading.Event, errors: list, deadline_s: float = 300) -> None:
    deadline = time.time() + deadline_s
    while not worker_pids():  # this test's own workers: a job is running now
        if time.time() > deadline:
            errors.append(f"no worker process of this run was seen in {deadline_s} s")
            return
        time.sleep(0.05)
    try:
        local_aws.stop()
        for regions in batch_backends.values():  # what a new endpoint process starts from: nothing
            for backend in regions.values():
                backend.reset()
        local_aws.start()
    except Exception as exc:  # shown by the test's assertion, not lost in a thread
        errors.append(f"restart failed: {exc!r}")
        raise
    restarted.set()


def test_a_restarted_endpoint_then_a_retry_of_the_shard_finishes_the_run(airflow_db, local_aws, data_root):
    # each child sleeps 12 s: the restart, started as soon as a worker process is seen, lands mid-run
    # even on a loaded machine
    conf = {"units": 160, "bucket_count": 8, "batches_per_shard": 8, "batches_per_child": 2, "sleep_s": 6.0,
            "salt": "endpoint-restart"}
    restarted, errors = threading.Event(), []
    restarter = threading.Thread(target=restart_once_workers_run, args=(local_aws, restarted, errors), daemon=True)
    restarter.start()
    # the retry must come after the endpoint is back: a few seconds' delay, and tries to spare
    run = run_dag(conf, retries=3, retry_delay=timedelta(seconds=5))
    restarter.join(timeout=120)
    assert restarted.is_set(), f"the endpoint was not restarted: {errors}"
    assert local_aws.batch.describe_job_definitions(jobDefinitionName="airbatch-worker-cpu",
                                                    status="ACTIVE")["jobDefinitions"]
    assert run.state == DagRunState.SUCCESS
    [ti] = task_instances(run, "run_shard")
    assert ti.try_number >= 2  # the first try lost its job with the endpoint
    [summary] = xcom(run, "summary")
    assert summary["batches"] == 8 and summary["failed"] == 0
    assert summary["succeeded"] + summary["cached"] == 8
    results, markers = outputs(data_root)
    assert len(results) == len(markers) == 8
