"""The engine's Airflow side: shard planning, child sizing, run folders, shard summaries."""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

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


# -- claims ---------------------------------------------------------------------------------------------------

def claim_for(out, run_id: str, keys=("k1", "k2")):
    return engine.new_claim(out, keys, {"dag_id": "d", "run_id": run_id, "task_id": "t", "map_index": 0})


def test_a_claim_whose_write_was_delayed_comes_after_one_that_looked_before_it_was_written(tmp_path, monkeypatch):
    out = engine.location(str(tmp_path / "outputs"))
    # run b claims and looks: nothing before it
    second = claim_for(out, "b")
    assert engine.claims_before(out, second, {"k1", "k2"}) == []
    # run a read the clock before b did, but its claim is written only now (its process was descheduled)
    monkeypatch.setattr(engine.time, "time_ns", lambda: second["created_ns"] - 1_000_000)
    first_by_clock = claim_for(out, "a", ("k2", "k3"))
    monkeypatch.undo()
    assert first_by_clock["created_ns"] < second["created_ns"] and first_by_clock["ticket"] > second["ticket"]
    # so a gives way to b for the batch they share: one of the two computes it, not both
    assert [c["claim_id"] for c in engine.claims_before(out, first_by_clock, {"k2", "k3"})] == [second["claim_id"]]
    assert engine.claims_before(out, second, {"k1", "k2"}) == []


def test_a_claim_waits_for_one_still_choosing_its_ticket_then_orders_by_tickets(tmp_path):
    out = engine.location(str(tmp_path / "outputs"))
    mine = claim_for(out, "mine")
    choosing = {"claim_id": "0-choosing", "created_ns": time.time_ns(), "ticket": None, "job_id": None,
                "keys": ["k1"], "run": {"run_id": "other"}}
    engine.write_claim(out, choosing)

    def chooses_a_later_ticket():
        time.sleep(0.5)
        engine.write_claim(out, {**choosing, "ticket": mine["ticket"] + 1})

    chooser = threading.Thread(target=chooses_a_later_ticket)
    started = time.monotonic()
    chooser.start()
    before = engine.claims_before(out, mine, {"k1"})
    chooser.join(timeout=30)
    # counted as first while it chose, it came after: only its ticket tells
    assert before == [] and time.monotonic() - started >= 0.5


def test_a_claim_abandoned_while_choosing_and_one_from_before_tickets_come_first_without_a_wait(tmp_path):
    out = engine.location(str(tmp_path / "outputs"))
    mine = claim_for(out, "mine")
    long_ago = time.time_ns() - int((engine.CLAIM_CHOOSE_WAIT_S + 1) * 1e9)
    engine.write_claim(out, {"claim_id": "1-abandoned", "created_ns": long_ago, "ticket": None, "job_id": None,
                             "keys": ["k1"], "run": {"run_id": "died"}})
    engine.write_claim(out, {"claim_id": "2-before-tickets", "created_ns": long_ago, "job_id": "job-1",
                             "keys": ["k2"], "run": {"run_id": "older release"}})
    engine.write_claim(out, {"claim_id": "3-elsewhere", "created_ns": long_ago, "ticket": None, "job_id": None,
                             "keys": ["k9"], "run": {"run_id": "other batches"}})
    started = time.monotonic()
    before = engine.claims_before(out, mine, {"k1", "k2"})
    assert sorted(c["claim_id"] for c in before) == ["1-abandoned", "2-before-tickets"]
    assert time.monotonic() - started < engine.CLAIM_CHOOSE_WAIT_S
    # and a claim a caller ignores (its own task's earlier try) is not waited for nor counted
    assert engine.claims_before(out, mine, {"k1", "k2"}, ignore=lambda c: c["run"]["run_id"] == "died") \
        == [c for c in before if c["claim_id"] == "2-before-tickets"]
