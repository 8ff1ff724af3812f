"""The engine's Airflow side: shard planning, child sizing, cache keys, and terminate-on-kill."""
from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from batch_worker.cache import cache_key
from batch_worker.workloads import get_workload
from operators.kit import engine, prep
from operators.pipelines.noop import noop_data


def test_children_plan_packs_batches_so_children_stay_few():
    assert engine.children_plan(0) == (0, 0)
    assert engine.children_plan(3000, env={"BATCH_MAX_CHILDREN": "8"}) == (375, 8)
    assert engine.children_plan(3000, env={}) == (6, 500)  # the AWS default: at most 500 containers
    assert engine.children_plan(5, env={"BATCH_MAX_CHILDREN": "8"}) == (1, 5)
    assert engine.children_plan(100, env={"BATCH_MAX_CHILDREN": "50", "BATCH_MIN_BATCHES_PER_CHILD": "10"}) == (10, 10)
    assert engine.children_plan(10, batches_per_child=3) == (3, 4)
    # never more than 10,000 children, whatever is asked
    assert engine.children_plan(20_000, batches_per_child=1) == (2, 10_000)


def test_cache_key_changes_with_content_code_version_and_params():
    base = cache_key("abc", "noop", "1", {"salt": ""})
    assert base == cache_key("abc", "noop", "1", {"salt": ""})
    assert len({base, cache_key("abd", "noop", "1", {"salt": ""}), cache_key("abc", "noop", "2", {"salt": ""}),
                cache_key("abc", "noop", "1", {"salt": "x"}), cache_key("abc", "pricing", "1", {"salt": ""})}) == 5


@pytest.fixture
def manifest(tmp_path):
    source = noop_data.write(str(tmp_path / "in.parquet"), units=500)
    result = prep.prepare(source, get_workload("noop").schema, str(tmp_path / "prep"), bucket_count=25)
    return result.manifest_uri


def test_plan_shards_cuts_the_manifest_into_labelled_shards(manifest, tmp_path):
    shards = engine.plan_shards(manifest, workload="noop", params={"salt": "s"}, out_root=str(tmp_path / "o"),
                                run_dir=str(tmp_path / "r"), batches_per_shard=10)
    specs = [engine.ShardSpec.from_dict(s["shard"]) for s in shards]
    assert [(s.start, s.stop) for s in specs] == [(0, 10), (10, 20), (20, 25)]
    assert specs[1].label == "shard 1: batches 10-19"
    assert specs[0].params == {"sleep_s": 0.0, "fail_units": [], "salt": "s"}  # defaults filled in
    batches = engine.shard_batches(specs[2], aws_conn_id=None)
    assert [b["batch_id"] for b in batches] == [20, 21, 22, 23, 24]
    assert sum(b["units"] for s in specs for b in engine.shard_batches(s, aws_conn_id=None)) == 500


@pytest.mark.parametrize("kwargs, message", [
    ({"params": {"speed": 1}}, "unknown parameter(s) ['speed']"),
    ({"batches_per_shard": 0}, "batches_per_shard must be 1..10000"),
    ({"min_success_ratio": 1.5}, "min_success_ratio must be within 0..1"),
    ({"timeout_minutes": 0}, "shard_timeout_minutes must be above 0"),
    ({"queue": "elsewhere"}, "queue must be one of"),
    ({"params": {"sleep_s": -1, "fail_units": "u1"}},
     "sleep_s must be >= 0, got -1; fail_units must be a list of strings, got 'u1'"),
    ({"workload": "pricing", "params": {"min_price_ratio": 1.5, "max_price_ratio": 1.0}},
     "min_price_ratio (1.5) is above max_price_ratio (1.0)"),
    ({"workload": "pricing", "params": {"min_price_ratio": 1.2, "max_change": 0.1}},
     "min_price_ratio (1.2) is above 1 + max_change (1.1)"),
    ({"workload": "pricing", "params": {"min_price_ratio": 0.5, "max_price_ratio": 0.8}},
     "max_price_ratio (0.8) is below 1 - max_change (0.85)"),
    ({"workload": "gpu_benchmark", "params": {"device": "tpu", "repeats": 0}},
     "repeats must be >= 1, got 0; device must be one of ['auto', 'cpu', 'gpu'], got 'tpu'"),
])
def test_plan_shards_refuses_bad_settings_before_anything_runs(manifest, tmp_path, kwargs, message):
    args = {"workload": "noop", "params": {}, "out_root": str(tmp_path), "run_dir": str(tmp_path), **kwargs}
    with pytest.raises(ValueError) as err:
        engine.plan_shards(manifest, **args)
    assert message in str(err.value)
    assert not [path for path in tmp_path.rglob("*.json") if path.parent.name != "prep"]  # nothing planned


def test_plan_shards_gives_each_shard_its_queue_definition_and_timeout(manifest, tmp_path):
    [shard] = engine.plan_shards(manifest, workload="noop", params={}, out_root=str(tmp_path), run_dir=str(tmp_path),
                                 queue="airbatch-gpu", timeout_minutes=1.5)
    assert shard["job_queue"] == "airbatch-gpu" and shard["job_definition"] == "airbatch-worker-gpu"
    assert shard["shard"]["timeout_s"] == 90
    from operators.kit.batch import UnitsOfWorkOperator

    op = UnitsOfWorkOperator(task_id="t", **shard)
    assert op.execution_timeout.total_seconds() == 90


# Run ids that shared one folder when ":", "+" and "~" all became "_".
COLLIDING_RUN_IDS = ["manual__2026-02-16T00:00:00+00:00", "manual__2026-02-16T00_00_00_00_00",
                     "manual__2026-02-16T00:00:00~00:00", "manual__2026-02-16T00:00:00 00:00",
                     "manual__2026-02-16T00/00/00+00/00", "manual__2026-02-16T00_00_00_00_00~" + "0" * 16, ".", ".."]


def test_run_ids_that_collided_get_their_own_readable_folders(tmp_path):
    roots = [engine.run_root_of("pricing_optimization", run_id, root=str(tmp_path)) for run_id in COLLIDING_RUN_IDS]
    assert len(set(roots)) == len(roots)
    for root in roots:
        name = root.rsplit("/", 1)[1]
        assert name not in ("", ".", "..") and "/" not in name and ":" not in name and "+" not in name
        assert root.startswith(f"{tmp_path}/runs/pricing_optimization/")
    assert roots[1].endswith("/manual__2026-02-16T00_00_00_00_00")  # a safe id is kept as it is
    assert "/manual__2026-02-16T00_00_00_00_00~" in roots[0]  # readable slug + hash of the exact id


def test_a_run_folder_refuses_a_run_that_does_not_own_it(tmp_path, monkeypatch):
    monkeypatch.setenv("DATA_ROOT", str(tmp_path))
    root = engine.own_run_root("units_of_work", COLLIDING_RUN_IDS[0], aws_conn_id=None)
    assert json.loads((Path(root) / engine.OWNER_FILE).read_text()) == {"dag_id": "units_of_work",
                                                                        "run_id": COLLIDING_RUN_IDS[0]}
    assert engine.own_run_root("units_of_work", COLLIDING_RUN_IDS[0], aws_conn_id=None) == root  # its own: reused
    with pytest.raises(ValueError) as err:
        engine.check_run_owner(root, "units_of_work", COLLIDING_RUN_IDS[1], aws_conn_id=None)
    message = str(err.value)
    assert COLLIDING_RUN_IDS[0] in message and COLLIDING_RUN_IDS[1] in message and root in message
    assert "another run id" in message


def sleeping_job(local_aws, name: str) -> str:
    return local_aws.batch.submit_job(
        jobName=name, jobQueue="airbatch-cpu", jobDefinition="airbatch-worker-cpu",
        containerOverrides={"command": ["python", "-c", "import time; time.sleep(120)"]})["jobId"]


def wait_status(local_aws, job_id: str, wanted: tuple[str, ...] = ("SUCCEEDED", "FAILED"), timeout: float = 60) -> dict:
    """The job once its status is one of `wanted`; fails the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = local_aws.batch.describe_jobs(jobs=[job_id])["jobs"][0]
        if job["status"] in wanted:
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} never reached {wanted}; last {job['status']}")


def test_a_deferred_task_killed_by_a_person_terminates_its_job(local_aws):
    from operators.kit.triggers import BatchJobWaitTrigger

    job_id = sleeping_job(local_aws, "trigger-kill")
    trigger = BatchJobWaitTrigger(job_id=job_id, poll_interval=0.2)
    assert trigger.serialize()[0] == "operators.kit.triggers.BatchJobWaitTrigger"

    async def scenario():
        waiting = asyncio.ensure_future(trigger.run().__anext__())
        await asyncio.to_thread(wait_status, local_aws, job_id, ("RUNNING",))
        assert not waiting.done()
        waiting.cancel()  # what the triggerer does, then it calls on_kill() on a user action
        await trigger.on_kill()

    asyncio.run(scenario())
    job = wait_status(local_aws, job_id, ("FAILED",))
    assert "killed" in job["statusReason"]


def test_the_trigger_fires_once_the_job_ends(local_aws):
    from operators.kit.triggers import BatchJobWaitTrigger

    job_id = local_aws.batch.submit_job(jobName="trigger-end", jobQueue="airbatch-cpu",
                                        jobDefinition="airbatch-worker-cpu",
                                        containerOverrides={"command": ["python", "-c", "pass"]})["jobId"]

    async def first_event():
        return await BatchJobWaitTrigger(job_id=job_id, poll_interval=0.2).run().__anext__()

    event = asyncio.run(first_event())
    assert event.payload["status"] == "SUCCEEDED" and event.payload["job_id"] == job_id


def test_the_trigger_does_not_fire_before_the_scheduler_can_have_seen_the_deferral(local_aws, monkeypatch):
    """A job that has ended at the first poll is reported only after `settle_s` since the trigger started."""
    from operators.kit import triggers

    job_id = local_aws.batch.submit_job(jobName="trigger-settle", jobQueue="airbatch-cpu",
                                        jobDefinition="airbatch-worker-cpu",
                                        containerOverrides={"command": ["python", "-c", "pass"]})["jobId"]
    wait_status(local_aws, job_id, ("SUCCEEDED",))
    pauses = []
    real_sleep = asyncio.sleep

    async def recorded_sleep(seconds):
        pauses.append(seconds)
        await real_sleep(0)

    monkeypatch.setattr(triggers.asyncio, "sleep", recorded_sleep)
    trigger = triggers.BatchJobWaitTrigger(job_id=job_id, poll_interval=0.2)

    async def first_event():
        return await trigger.run().__anext__()

    event = asyncio.run(first_event())
    assert event.payload["status"] == "SUCCEEDED"
    assert len(pauses) == 1 and 0 < pauses[0] <= trigger.settle_s  # the rest of settle_s, then the event


def test_a_waiting_task_killed_in_sync_mode_terminates_its_job(local_aws):
    from operators.kit.batch import UnitsOfWorkOperator

    op = UnitsOfWorkOperator(task_id="kill", shard={}, job_queue="airbatch-cpu",
                             job_definition="airbatch-worker-cpu")
    op.on_kill()  # nothing submitted yet: nothing to terminate, no error
    op.job_id = sleeping_job(local_aws, "sync-kill")
    wait_status(local_aws, op.job_id, ("RUNNING",))
    op.on_kill()
    assert wait_status(local_aws, op.job_id, ("FAILED",))["statusReason"] == "Task killed by the user"


def test_a_shards_summary_and_the_runs_count_units_computed_cached_and_dead_lettered():
    """What the notification shows: units by what happened to them, not only their number."""
    spec = engine.ShardSpec(index=0, label="0", manifest="m", start=0, stop=3, workload="noop", params={},
                            output_root="/out", run_root="/run")
    batches = [{"batch_id": i, "key": f"k{i}", "uri": f"b{i}", "units": units} for i, units in enumerate((5, 7, 11))]
    shard = engine.ShardOutcome(spec, batches, done={"k0": {"seconds": 1.0}, "k1": {"seconds": 0.0}},
                                submitted_keys={"k0", "k2"})
    shard.failures.append({"batch_id": 2, "key": "k2", "uri": "b2", "units": 11, "class": "bad_data", "error": "x"})
    summary = shard.summary([], 1.0, "/run/results/shard-0.json")
    assert (summary["units"], summary["units_computed"], summary["units_cached"], summary["units_failed"]) == \
        (23, 5, 7, 11)
    older = {k: v for k, v in summary.items() if k not in ("units_computed", "units_cached")}  # before the counts
    combined = engine.combine([summary, older])
    assert (combined["units"], combined["units_computed"], combined["units_cached"], combined["units_failed"]) == \
        (46, 5, 7, 22)
