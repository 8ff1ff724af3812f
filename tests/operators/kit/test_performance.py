"""What keeps small runs cheap: batch counts chosen from the data, brisk polling of short jobs, task times."""
from __future__ import annotations

import datetime as dt

import pytest

from batch_worker.workloads import get_workload
from operators.kit import batch, engine, prep
from operators.kit.summary import format_task_times, task_spans
from operators.pipelines.noop import noop_data


def test_buckets_follow_the_rows_up_to_a_power_of_two_with_bucket_count_the_most():
    assert prep.buckets_for(1_000_000, 3000, None) == 3000  # no target: exactly bucket_count
    assert prep.buckets_for(1_000_000, 3000, 0) == 3000
    assert prep.buckets_for(1_000_000, 3000, 50_000) == 32  # 20 rounded up to a power of two
    assert prep.buckets_for(2_750_000, 3000, 50_000) == 64
    assert prep.buckets_for(2_700_000, 3000, 50_000) == 64  # a little fewer rows: the same batching
    assert prep.buckets_for(49_999, 3000, 50_000) == 1
    assert prep.buckets_for(0, 3000, 50_000) == 1
    assert prep.buckets_for(10**9, 3000, 50_000) == 3000  # the limit holds
    assert prep.buckets_for(10**6, 20, 1_000) == 20


@pytest.mark.parametrize("target", [-1, 2.5, True, "100"])
def test_a_target_that_is_not_a_whole_number_of_rows_is_refused(target):
    with pytest.raises(ValueError, match="rows_per_batch must be a whole number of rows"):
        prep.buckets_for(100, 10, target)


def test_prepare_hashes_few_rows_into_few_batches_and_reports_the_count_it_used(tmp_path):
    source = noop_data.write(str(tmp_path / "in.parquet"), units=500, rows_per_unit=3)
    schema = get_workload("noop").schema
    few = prep.prepare(source, schema, str(tmp_path / "few"), bucket_count=100, rows_per_batch=400)
    assert few.bucket_count == 4 and few.batches == 4  # 1,500 rows / 400 = 3.75, up to 4
    assert few.rows_ok == 1500 and few.units == 500
    exact = prep.prepare(source, schema, str(tmp_path / "exact"), bucket_count=100)
    assert exact.bucket_count == 100 and exact.batches > 90  # a bucket may stay empty
    with pytest.raises(ValueError, match="rows_per_batch"):
        prep.prepare(source, schema, str(tmp_path / "bad"), bucket_count=100, rows_per_batch=-5)
    assert not (tmp_path / "bad").exists()  # refused before anything is read or written


def test_the_pause_between_polls_starts_short_and_grows_to_the_poll_interval():
    pauses = [batch.FIRST_POLL_S]
    while pauses[-1] < 10:
        pauses.append(batch.next_poll_pause(pauses[-1], 10))
    assert pauses[0] <= 0.25 and pauses[-1] == 10 and pauses == sorted(pauses)
    for i, pause in enumerate(pauses[:-1]):  # a job's end is seen within a tenth of its run time + FIRST_POLL_S
        assert pause <= 0.1 * sum(pauses[:i]) + batch.FIRST_POLL_S + 1e-9
    assert len(pauses) <= 45  # the pause reaches the interval within about 40 polls
    assert batch.next_poll_pause(0.25, 0.1) == 0.1  # never above the interval


def test_a_short_job_is_seen_ending_at_the_first_polls(monkeypatch):
    statuses = iter(["RUNNING", "RUNNING", "SUCCEEDED"])
    slept: list[float] = []
    operator = batch.HouseBatchOperator(task_id="t", job_name="j", job_queue="q", job_definition="d", poll_interval=10)
    monkeypatch.setattr(operator, "describe", lambda job_id: {"jobId": job_id, "status": next(statuses)})
    monkeypatch.setattr(batch.time, "sleep", slept.append)
    job = operator.wait_until_ended("job-1", deadline=batch.time.time() + 600)
    assert job["status"] == "SUCCEEDED"
    assert slept == [batch.FIRST_POLL_S, batch.FIRST_POLL_S * batch.POLL_GROWTH]


def test_task_times_span_each_task_from_its_first_start_to_its_last_end_in_start_order():
    at = dt.datetime(2026, 2, 16, tzinfo=dt.timezone.utc)
    second = dt.timedelta(seconds=1)
    rows = [("run_shard", at + 3 * second, at + 9 * second), ("prepare", at, at + 2 * second),
            ("run_shard", at + 4 * second, at + 12 * second), ("evaluate", at + 13 * second, None)]
    times = task_spans(rows)
    assert times == [("prepare", 1, 2.0), ("run_shard", 2, 9.0)]
    assert format_task_times(times).splitlines() == ["  prepare             2.00 s",
                                                     "  run_shard           9.00 s (2 instances)"]


def test_on_the_local_endpoint_a_shard_starts_no_more_children_than_vcpus():
    local = {"BATCH_MAX_CHILDREN": "8", "BATCH_LOCAL_VCPUS": "2"}
    assert engine.children_plan(1000, env=local) == (500, 2)
    assert engine.children_plan(1, env=local) == (1, 1)
    assert engine.children_plan(1000, env={"BATCH_MAX_CHILDREN": "8"}) == (125, 8)  # AWS: containers, not vCPUs
    assert engine.children_plan(1000, batches_per_child=10, env=local) == (10, 100)  # an explicit size wins


def test_the_worker_reads_a_batch_file_to_the_frame_pandas_reads(tmp_path):
    import pandas as pd

    from batch_worker.runtime import read_batch
    from operators.pipelines.pricing import pricing_data

    pricing_data.generate(tmp_path / "sales", 4000, units=150, days=28, start_date="2026-01-19")
    result = prep.prepare(str(tmp_path / "sales"), get_workload("pricing").schema, str(tmp_path / "prep"),
                          bucket_count=3)
    for uri in prep.read_manifest(result.manifest_uri)["uri"]:
        pd.testing.assert_frame_equal(read_batch(uri), pd.read_parquet(uri))


def test_with_report_the_follower_prints_the_run_report_once_the_run_has_ended(tmp_path, airflow_db):
    """`make demo` prints progress and the summary from one process: one Airflow start-up, not two."""
    import os
    import subprocess
    import sys

    from localaws.stack import REPO

    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait(timeout=60)
    follower = subprocess.run(
        [sys.executable, "-m", "operators.kit.summary", "no_such_dag_for_reports", "--follow",
         str(tmp_path / "demo.log"), "--pid", str(ended.pid), "--interval", "0.1", "--report"],
        cwd=REPO, capture_output=True, text=True, env=os.environ, timeout=300)
    lines = follower.stdout.splitlines()
    assert lines[0].endswith("starting no_such_dag_for_reports"), follower.stdout + follower.stderr
    assert "no_such_dag_for_reports: latest run missing" in lines[1:], follower.stdout
    assert follower.returncode == 1  # no successful run to report
