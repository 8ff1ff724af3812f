"""The capacity failover end to end, the same test in both wait modes: in the task (sync) and in the triggerer
(deferrable, production's `[operators] default_deferrable`). A shard's job stuck RUNNABLE on airbatch-cpu (its compute
environment DISABLED: the local endpoint places nothing) is cancelled and its batches run on airbatch-cpu-ondemand."""
from __future__ import annotations

import pytest

from airflow.utils.state import DagRunState

from tests.system.test_units_of_work import run_dag, xcom

pytestmark = pytest.mark.system


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch):
    monkeypatch.setenv("SHARD_RETRY_DELAY_S", "1")


@pytest.mark.parametrize("deferrable", [False, True], ids=["sync", "deferrable"])
def test_a_shard_stuck_runnable_moves_to_the_fallback_queue(airflow_db, local_aws, data_root, capfd, deferrable):
    batch = local_aws.batch
    batch.update_compute_environment(computeEnvironment="airbatch-cpu", state="DISABLED")
    try:
        run = run_dag({"units": 40, "bucket_count": 4, "batches_per_shard": 4, "batches_per_child": 1,
                       "salt": f"capacity-{deferrable}"}, deferrable=deferrable, runnable_timeout_s=2, retries=0)
    finally:
        batch.update_compute_environment(computeEnvironment="airbatch-cpu", state="ENABLED")
    text = capfd.readouterr().out
    assert run.state == DagRunState.SUCCESS, text[-4000:]
    [shard] = xcom(run, "run_shard")
    assert shard["succeeded"] == 4 and shard["failed"] == 0
    [shortage] = shard["capacity_shortages"]
    assert shortage["queue"] == "airbatch-cpu" and shortage["fallback"] == "airbatch-cpu-ondemand"
    assert shortage["runnable"] == 4 and shortage["waited_s"] >= 2

    first, moved = batch.describe_jobs(jobs=shard["job_ids"])["jobs"]
    assert first["jobQueue"].endswith("/airbatch-cpu") and first["status"] == "FAILED"
    assert "capacity shortage: 4 children RUNNABLE" in first["statusReason"]
    assert moved["jobQueue"].endswith("/airbatch-cpu-ondemand") and moved["status"] == "SUCCEEDED"
    assert "capacity failover: AWS Batch job " + first["jobId"] in text
    if deferrable:  # the watch ran in the trigger: its event, then the task's failover, then a wait for each job
        assert "handing it back to the task for the capacity failover" in text
        assert text.count("Pausing task as DEFERRED") >= 3
    else:
        assert "Pausing task as DEFERRED" not in text
