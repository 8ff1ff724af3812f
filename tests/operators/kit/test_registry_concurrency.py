"""The registry with concurrent writers: training runs deciding and publishing while inference reads.

Each property holds on a local DATA_ROOT and on s3:// through the local endpoint. Races are made
two ways: threads (and processes) released together, and a writer forced to act between another
writer's read and its write, which is the interleaving a plain read-modify-write loses.
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
import time
import types

import pytest

from operators.kit import conditional, registry
from operators.kit.engine import location

from tests.operators.kit.test_conditional import DEADLINE_S, REPO, root, together  # noqa: F401 (root: the fixture)

ARGS = dict(metrics={"m": 1}, input_stats={}, lineage={"run_id": "r"}, proposed="review", reasons=[])


def between_read_and_write(monkeypatch, path_end: str, action) -> None:
    """Run `action` once, right after the next read of a file ending in `path_end` (before its writer writes)."""
    real_read, fired = conditional.read, []

    def read(loc, path):
        snapshot = real_read(loc, path)
        if path.endswith(path_end) and not fired:
            fired.append(path)
            action()
        return snapshot

    monkeypatch.setattr(conditional, "read", read)


def decision_times(monkeypatch, *times: float) -> None:
    """The registry's clock gives `times`, one per call, in order."""
    clock = iter(times)
    monkeypatch.setattr(registry, "time", types.SimpleNamespace(time=lambda: next(clock), strftime=time.strftime,
                                                                gmtime=time.gmtime))


# --- decisions -------------------------------------------------------------------------------------------

def test_two_different_decisions_at_once_one_wins_and_the_other_is_told(root):
    models = registry.Registry(root, "scores")
    for round_ in range(3):
        version = f"2026-02-16_{round_}"
        models.register(version, **ARGS)
        outcomes = together(lambda: models.decide(version, registry.APPROVED, by="person:ann"),
                            lambda: models.decide(version, registry.REJECTED, by="person:bob"))
        errors = [o for o in outcomes if isinstance(o, Exception)]
        [won] = [o for o in outcomes if isinstance(o, dict)]
        [error] = errors
        assert isinstance(error, registry.RegistryError)
        loser = "Rejected decision by person:bob" if won["status"] == registry.APPROVED else \
            "Approved decision by person:ann"
        assert f"already {won['status']} (by {won['decided_by']} at " in str(error)
        assert f"this {loser} was not recorded" in str(error)
        assert models.get(version)["status"] == won["status"]
        if won["status"] == registry.APPROVED:
            assert models.current()["version"] == version


def test_a_decision_landing_between_anothers_read_and_write_is_kept(root, monkeypatch):
    models = registry.Registry(root, "scores")
    models.register("v1", **ARGS)
    between_read_and_write(monkeypatch, "v1/version.json",
                           lambda: models.decide("v1", registry.REJECTED, by="person:bob"))
    with pytest.raises(registry.RegistryError, match=r"already Rejected \(by person:bob .*this Approved decision "
                                                     r"by thresholds was not recorded"):
        models.decide("v1", registry.APPROVED, by="thresholds")
    assert models.get("v1")["status"] == registry.REJECTED and models.current() is None


def test_the_same_decision_twice_at_once_is_recorded_once(root):
    models = registry.Registry(root, "scores")
    models.register("v1", **ARGS)
    outcomes = together(*[lambda: models.decide("v1", registry.APPROVED, by="thresholds")] * 4)
    assert all(isinstance(o, dict) and o["status"] == registry.APPROVED for o in outcomes)
    assert len({o["decided_at"] for o in outcomes}) == 1
    assert models.current()["version"] == "v1"


def test_decisions_from_processes_on_a_local_data_root_one_wins(tmp_path):
    models = registry.Registry(str(tmp_path), "scores", aws_conn_id=None)
    models.register("v1", **ARGS)
    script = textwrap.dedent(f"""
        import sys
        from operators.kit import registry
        models = registry.Registry({str(tmp_path)!r}, "scores", aws_conn_id=None)
        try:
            models.decide("v1", sys.argv[1], by="process " + sys.argv[2])
        except registry.RegistryError:
            sys.exit(3)
    """)
    statuses = [registry.APPROVED, registry.REJECTED] * 2
    workers = [subprocess.Popen([sys.executable, "-c", script, status, str(i)], cwd=REPO)
               for i, status in enumerate(statuses)]
    codes = [w.wait(timeout=DEADLINE_S) for w in workers]
    stored = models.get("v1")
    assert set(codes) <= {0, 3} and 3 in codes
    assert [s for s, c in zip(statuses, codes) if c == 0] == [stored["status"]] * codes.count(0)
    assert stored["decided_by"] in {f"process {i}" for i, s in enumerate(statuses) if s == stored["status"]}


# --- register -------------------------------------------------------------------------------------------

def test_register_never_overwrites_a_decision_made_while_it_registers(root, monkeypatch):
    models = registry.Registry(root, "scores")
    models.register("v1", **ARGS)  # the first try of the evaluation, still pending
    between_read_and_write(monkeypatch, "v1/version.json",
                           lambda: models.decide("v1", registry.APPROVED, by="person:ann"))
    again = models.register("v1", **{**ARGS, "metrics": {"m": 2}})  # its retry
    assert again["version"] == "v1-r2" and again["status"] == registry.PENDING
    kept = models.get("v1")
    assert (kept["status"], kept["decided_by"], kept["metrics"]) == (registry.APPROVED, "person:ann", {"m": 1})
    assert models.current()["version"] == "v1"


def test_racing_registrations_of_one_version_leave_one_pending_record(root):
    models = registry.Registry(root, "scores")
    outcomes = together(*[lambda i=i: models.register("v1", **{**ARGS, "metrics": {"m": i}}) for i in range(4)])
    assert all(isinstance(o, dict) and o["version"] == "v1" for o in outcomes)
    stored = models.get("v1")
    assert stored["status"] == registry.PENDING and stored["metrics"] in [o["metrics"] for o in outcomes]
    assert [v["version"] for v in models.versions()] == ["v1"]


# --- the current pointer --------------------------------------------------------------------------------

def test_current_moves_only_to_a_later_approval_whatever_order_the_writes_land_in(root, monkeypatch):
    models = registry.Registry(root, "scores")
    for version in ("older", "newer"):
        models.register(version, **ARGS)
    decision_times(monkeypatch, 2000.0, 1000.0)
    models.decide("newer", registry.APPROVED, by="person:ann")  # approved at 2000
    models.decide("older", registry.APPROVED, by="person:bob")  # approved at 1000; its pointer write lands last
    assert models.get("older")["status"] == registry.APPROVED
    assert models.current()["version"] == "newer"


def test_an_approval_landing_between_anothers_read_and_write_of_current_is_kept(root, monkeypatch):
    models = registry.Registry(root, "scores")
    for version in ("first", "second"):
        models.register(version, **ARGS)
    models.decide("first", registry.APPROVED, by="thresholds")
    models.register("third", **ARGS)
    now = time.time()
    # "third" is approved later than "second" but its pointer write reaches current.json first
    decision_times(monkeypatch, now + 1000, now + 2000)
    between_read_and_write(monkeypatch, "current.json",
                           lambda: models.decide("third", registry.APPROVED, by="person:ann"))
    models.decide("second", registry.APPROVED, by="thresholds")
    assert models.current()["version"] == "third"


def test_many_approvals_at_once_leave_current_at_the_last_approved(root):
    models = registry.Registry(root, "scores")
    versions = [f"v{i}" for i in range(6)]
    for version in versions:
        models.register(version, **ARGS)
    outcomes = together(*[lambda v=v: models.decide(v, registry.APPROVED, by="thresholds") for v in versions])
    last = max(outcomes, key=lambda record: (record["decided_at"], record["version"]))
    assert models.current()["version"] == last["version"]


def test_an_inference_reader_sees_only_approved_versions_while_training_decides(root):
    models = registry.Registry(root, "scores")
    models.register("v0", **ARGS)
    models.decide("v0", registry.APPROVED, by="thresholds")
    seen, failures, stop = [], [], threading.Event()

    def reader():
        while not stop.is_set():
            try:
                record = models.current()
                seen.append((record["version"], record["status"]))
            except Exception as error:  # noqa: BLE001 - any failed read is what is looked for
                failures.append(repr(error))

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    try:
        for i in range(1, 7):
            models.register(f"v{i}", **ARGS)
            models.decide(f"v{i}", registry.REJECTED if i % 2 else registry.APPROVED, by="thresholds")
    finally:
        stop.set()
        thread.join(timeout=DEADLINE_S)
    assert failures == [] and seen
    assert {status for _, status in seen} == {registry.APPROVED}
    assert {version for version, _ in seen} <= {"v0", "v2", "v4", "v6"}
    assert models.current()["version"] == "v6"


# --- publish --------------------------------------------------------------------------------------------

def approved_with_artifact(models: registry.Registry, version: str, content: bytes) -> None:
    models.register(version, **ARGS, artifact="model.bin")
    loc = location(models.version_dir(version))
    loc.write_bytes(loc.join("model.bin"), content)
    models.decide(version, registry.APPROVED, by="thresholds")


def published_current(root: str) -> tuple[str, bytes]:
    out = location(f"{root}/published/scores")
    return json.loads(out.read_bytes(out.join("current", "version.json")))["version"], \
        out.read_bytes(out.join("current", "model.bin"))


def test_publishing_an_older_version_again_leaves_current_at_the_newer(root):
    models = registry.Registry(root, "scores")
    approved_with_artifact(models, "older", b"old model")
    approved_with_artifact(models, "newer", b"new model")
    assert models.publish("newer").endswith("/current/model.bin")
    again = models.publish("older")  # a cleared publish task of the older run
    assert again.endswith("/versions/older/model.bin")
    assert published_current(root) == ("newer", b"new model")


def test_racing_publishes_leave_current_at_the_registrys_current_version(root):
    models = registry.Registry(root, "scores")
    for i in range(4):
        approved_with_artifact(models, f"v{i}", f"model {i}".encode())
    outcomes = together(*[lambda i=i: models.publish(f"v{i}") for i in range(4)] * 2)
    assert not [o for o in outcomes if isinstance(o, Exception)]
    assert published_current(root) == ("v3", b"model 3")


def test_a_publish_overtaken_by_a_newer_approval_copies_the_newer_version(root, monkeypatch):
    models = registry.Registry(root, "scores")
    approved_with_artifact(models, "v1", b"model 1")
    models.register("v2", **ARGS, artifact="model.bin")
    loc = location(models.version_dir("v2"))
    loc.write_bytes(loc.join("model.bin"), b"model 2")
    real_current = models.current

    def current():
        head = real_current()  # v1: v1's publish is about to copy it to current/ ...
        monkeypatch.setattr(models, "current", real_current)
        models.decide("v2", registry.APPROVED, by="person:ann")  # ... when v2 is approved and published first
        models.publish("v2")
        return head

    monkeypatch.setattr(models, "current", current)
    assert models.publish("v1").endswith("/versions/v1/model.bin")
    assert published_current(root) == ("v2", b"model 2")


# --- intervals: backfills and late approvals ------------------------------------------------------------

def week(day: int) -> tuple[str, str]:
    """The weekly interval starting on January `day` 2026 (a Monday: 5, 12, 19, 26), as ISO 8601 text."""
    from datetime import datetime, timedelta, timezone

    start = datetime(2026, 1, day, tzinfo=timezone.utc)
    return start.isoformat(), (start + timedelta(days=7)).isoformat()


def approved_week(models: registry.Registry, version: str, day: int, status: str = registry.APPROVED,
                  content: bytes | None = None) -> dict:
    models.register(version, **ARGS, interval=week(day), artifact="model.bin" if content else None)
    if content:
        loc = location(models.version_dir(version))
        loc.write_bytes(loc.join("model.bin"), content)
    return models.decide(version, status, by="thresholds")


def test_a_backfilled_older_interval_never_replaces_a_newer_current_version(root):
    models = registry.Registry(root, "scores")
    assert approved_week(models, "w19", 19)["current"] is True
    older = approved_week(models, "w05", 5)  # a backfill of an older week, approved after the newer one
    assert older["status"] == registry.APPROVED and older["current"] is False
    assert models.current()["version"] == "w19"
    stored = models.get("w05")  # kept as an approved version, and its record says why it is not current
    assert stored["status"] == registry.APPROVED and stored["not_current"]["current"] == "w19"
    assert "its data interval ends 2026-01-12T00:00:00+00:00, before the current version w19's " \
           "(2026-01-26T00:00:00+00:00)" in stored["not_current"]["reason"]
    assert stored["interval_start"] == "2026-01-05T00:00:00+00:00"
    # the same decision again (a retried task) says the same
    assert models.decide("w05", registry.APPROVED, by="thresholds")["current"] is False
    # a newer interval moves current; a rerun of the current interval approved later does too
    assert approved_week(models, "w26", 26)["current"] is True
    assert approved_week(models, "w26-r2", 26)["current"] is True
    assert models.current()["version"] == "w26-r2"


def test_a_late_approval_of_an_older_version_leaves_the_newer_current(root):
    """A person approves last week's version (it waited under Required Actions) after this week's was approved."""
    models = registry.Registry(root, "scores")
    models.register("w12", **ARGS, interval=week(12))  # pending: waits for a person
    approved_week(models, "w19", 19)
    late = models.decide("w12", registry.APPROVED, by="person:ann")
    assert late["status"] == registry.APPROVED and late["current"] is False
    assert models.current()["version"] == "w19"
    assert "a late approval" in late["not_current"]["reason"]


def test_approvals_of_several_intervals_at_once_leave_the_newest_interval_current(root):
    models = registry.Registry(root, "scores")
    days = (26, 5, 19, 12)
    for day in days:
        models.register(f"w{day:02d}", **ARGS, interval=week(day))
    outcomes = together(*[lambda d=d: models.decide(f"w{d:02d}", registry.APPROVED, by="thresholds") for d in days])
    assert not [o for o in outcomes if isinstance(o, Exception)]
    assert models.current()["version"] == "w26"
    # each outcome says whether it was made current when it landed; the newest interval always is
    assert [o["current"] for o in outcomes if o["version"] == "w26"] == [True]
    assert all(o["not_current"]["reason"] for o in outcomes if not o["current"])


def test_each_interval_is_compared_with_the_version_approved_for_the_interval_before_it(root):
    models = registry.Registry(root, "scores")
    approved_week(models, "w05", 5)
    approved_week(models, "w12", 12)
    approved_week(models, "w12-r2", 12)  # the week run again and approved later: the one to compare with
    approved_week(models, "w19", 19, status=registry.REJECTED)
    approved_week(models, "w26", 26)
    assert models.approved_before(week(19)[0])["version"] == "w12-r2"  # not the newest, w26
    assert models.approved_before(week(26)[0])["version"] == "w12-r2"  # w19 was rejected
    assert models.approved_before(week(12)[0])["version"] == "w05"  # a rerun of week 12: the week before
    assert models.approved_before("2026-01-05T00:00:00Z") is None  # nothing before the first week
    assert models.approved_before(None)["version"] == "w26"  # no interval known: the current version


def test_a_registry_from_before_intervals_keeps_comparing_with_its_current_version(root):
    models = registry.Registry(root, "scores")
    models.register("old", **ARGS)  # no interval recorded
    models.decide("old", registry.APPROVED, by="thresholds")
    assert models.approved_before(week(12)[0])["version"] == "old"
    # the first version with an interval is compared with it, and approved later, it becomes current
    assert approved_week(models, "w12", 12)["current"] is True


def test_publishing_a_backfilled_interval_writes_its_version_and_leaves_current_alone(root, capsys):
    models = registry.Registry(root, "scores")
    approved_week(models, "w19", 19, content=b"week 19")
    assert models.publish("w19").endswith("/current/model.bin")
    approved_week(models, "w05", 5, content=b"week 5")
    assert models.publish("w05").endswith("/versions/w05/model.bin")
    assert published_current(root) == ("w19", b"week 19")
    assert "published to " in capsys.readouterr().out


def test_an_interval_that_ends_before_it_starts_is_refused(root):
    models = registry.Registry(root, "scores")
    with pytest.raises(registry.RegistryError, match="starts at 2026-01-12T00:00:00\\+00:00, after its end"):
        models.register("bad", **ARGS, interval=("2026-01-12T00:00:00Z", "2026-01-05T00:00:00Z"))
