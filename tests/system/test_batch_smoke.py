"""The stack end to end: dag.test() -> BatchOperator -> local endpoint -> real child processes."""
from __future__ import annotations

import json

import pytest

from airflow.dag_processing.dagbag import DagBag
from airflow.providers.amazon.aws.hooks.batch_client import BatchClientHook
from airflow.utils.state import DagRunState, TaskInstanceState

pytestmark = pytest.mark.system


def load_dag(dag_id, folder="dags"):
    bag = DagBag(dag_folder=f"{folder}/{dag_id}.py")
    assert not bag.import_errors, bag.import_errors
    return bag.dags[dag_id]


def child_records(root):
    return [json.loads(p.read_text()) for p in sorted(root.rglob("child-*.json"))]


def max_overlap(records):
    events = sorted([(r["started"], 1) for r in records] + [(r["ended"], -1) for r in records])
    running = peak = 0
    for _, delta in events:
        running += delta
        peak = max(peak, running)
    return peak


def test_unchanged_batch_operator_runs_every_child_within_capacity(airflow_db, local_aws, data_root, monkeypatch, capfd):
    # The provider's wait sleeps 1-10 s before each phase; the docstring of BatchClientHook says to tune these.
    monkeypatch.setattr(BatchClientHook, "DEFAULT_DELAY_MIN", 0)
    monkeypatch.setattr(BatchClientHook, "DEFAULT_DELAY_MAX", 0.5)
    out = data_root / "outputs" / "unchanged"
    dag = load_dag("unchanged_batch_operator", folder="tests/fixture_dags")
    run = dag.test(run_conf={"data_root": str(data_root), "out": str(out), "children": 120})
    assert run.state == DagRunState.SUCCESS
    records = child_records(out)
    assert sorted(r["index"] for r in records) == list(range(120))
    # each child in its own job and, isolated as a container is, its own PID namespace (bwrap's init is 1)
    assert len({r["job_id"] for r in records}) == 120
    assert {r["pid"] for r in records} == {2}
    assert {r["queue"] for r in records} == {"airbatch-cpu"} and {r["compute_environment"] for r in records} == {"airbatch-cpu"}
    assert max_overlap(records) <= 2  # BATCH_LOCAL_VCPUS=2, one vCPU per child
    # awslogs_enabled streams the array's log stream (its first child's, as on AWS) into the task log
    task_log = capfd.readouterr().out
    assert "child 0 of job" in task_log and "(attempt 1)" in task_log


def test_smoke_dag_maps_shards_and_each_child_writes_its_file(airflow_db, local_aws, data_root):
    dag = load_dag("batch_smoke")
    run = dag.test(run_conf={"shards": 3, "children": 20})
    assert run.state == DagRunState.SUCCESS
    for shard in range(3):
        [shard_dir] = list(data_root.glob(f"outputs/batch_smoke/*/shard-{shard}"))
        assert sorted(r["index"] for r in child_records(shard_dir)) == list(range(20))


def test_failing_child_fails_the_task_with_its_reason_and_log(airflow_db, local_aws, data_root, capfd):
    dag = load_dag("batch_smoke")
    run = dag.test(run_conf={"shards": 1, "children": 10, "fail_index": 7})
    assert run.state == DagRunState.FAILED
    [ti] = [ti for ti in run.get_task_instances() if ti.task_id == "run_shard"]
    assert ti.state == TaskInstanceState.FAILED
    text = capfd.readouterr().out  # the task log, as dag.test() prints it
    assert "1 of 10 children FAILED; first: index 7: Essential container in task exited" in text
    assert "exit code 3" in text
    assert "child 7: failing on purpose (--fail-index 7)" in text
    # the nine others still ran
    assert sorted(r["index"] for r in child_records(data_root)) == [i for i in range(10) if i != 7]
