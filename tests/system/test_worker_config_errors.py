"""A worker that cannot run (a worklist for a workload or a parameter the worker does not know) fails fast.

The Airflow side and the worker image can run different code: here the worklist the shard submits
is changed on its way, as an older worker image would see it. The child exits 64 ("config"), Batch
does not retry it, the shard fails on its first try, and the child's own "cannot run: ..." line is
the first error of the summary, of the task's error and of the failure notification.
"""
from __future__ import annotations

import json
import re

import pytest

from airflow.utils.state import DagRunState, TaskInstanceState

from operators.kit.notify import FailureNotifier
from tests.system.test_batch_smoke import load_dag
from tests.system.test_units_of_work import jobs_named, task_instances, xcom

pytestmark = pytest.mark.system


@pytest.mark.parametrize("change, expected", [
    ({"params": {"sleep_s": 0.0, "fail_units": [], "salt": "config", "threads": 4}},
     "cannot run: workload 'noop' parameters: unknown parameter(s) ['threads']"),
    ({"workload": "noop_v2"}, "cannot run: unknown workload 'noop_v2'; registered: "),
], ids=["unknown-parameter", "unknown-workload"])
def test_a_worker_that_cannot_run_fails_once_with_its_own_error(airflow_db, local_aws, data_root, monkeypatch,
                                                               capfd, change, expected):
    from operators.kit import engine

    original = engine.write_worklist

    def worklist_for_another_worker(*args, **kwargs):
        uri = original(*args, **kwargs)
        path = data_root.joinpath(uri.removeprefix(str(data_root) + "/"))
        path.write_text(json.dumps({**json.loads(path.read_text()), **change}))
        return uri

    monkeypatch.setattr(engine, "write_worklist", worklist_for_another_worker)
    monkeypatch.setenv("SHARD_RETRY_DELAY_S", "1")
    source = data_root / "units.csv"
    source.write_text("unit_id,seq,value\n" + "".join(f"u{i:02d},0,{i}.5\n" for i in range(12)))
    before = {j["jobId"] for j in jobs_named(local_aws, "units_of_work")}

    dag = load_dag("units_of_work")
    dag.get_task("run_shard").partial_kwargs["on_failure_callback"] = [FailureNotifier()]
    run = dag.test(run_conf={"input_uri": str(source), "bucket_count": 3, "batches_per_shard": 3,
                             "batches_per_child": 1, "salt": "config"})

    assert run.state == DagRunState.FAILED
    errors = [line for line in capfd.readouterr().out.splitlines() if re.search(r"\[error\s*\]", line)]
    assert expected in errors[0], errors[:3]  # the task log's first error is the child's own
    [ti] = task_instances(run, "run_shard")
    assert ti.state == TaskInstanceState.FAILED and ti.try_number == 1  # Airflow did not retry
    [job] = [j for j in jobs_named(local_aws, "units_of_work") if j["jobId"] not in before and ":" not in j["jobId"]]
    children = local_aws.batch.list_jobs(arrayJobId=job["jobId"], jobStatus="FAILED")["jobSummaryList"]
    assert len(children) == 3
    for child in children:  # Batch did not retry either: one attempt, exit 64
        [attempt] = local_aws.batch.describe_jobs(jobs=[child["jobId"]])["jobs"][0]["attempts"]
        assert attempt["container"]["exitCode"] == 64
    assert len(list((data_root / "runs").rglob("worklists/*.json"))) == 1

    [summary] = xcom(run, "run_shard", key="summary")
    assert summary["failures_by_class"] == {"config": 3}
    assert summary["first_errors"]["config"].startswith(f"batch 0: child 0: {expected}")

    # the failure's message (the failed-run alarm's own message may be beside it: docs/alarms.md)
    [message] = [m for m in (json.loads(p.read_text()) for p in (data_root / "outbox").glob("*.json"))
                 if m["kind"] != "alarm"]
    assert message["kind"] == "failure"
    first_error = message["data"]["error"]
    assert first_error.startswith("AirflowFailException: shard 0: batches 0-2: batch 0: child 0: cannot run: ")
    assert expected in first_error
