"""A model registry under DATA_ROOT: versions with a status, their metrics, input statistics and lineage.

    registry/<model>/versions/<version>/version.json   status, metrics, input_stats, lineage, limits, decision
    registry/<model>/versions/<version>/report.html    the evaluation report
    registry/<model>/versions/<version>/<artifact>     the run's outputs (the evaluator's `artifact`)
    registry/<model>/current.json                      the current version (its id, when approved, its interval end)
    published/<model>/current/<artifact>               what `publish` wrote for the current version
    published/<model>/versions/<version>/<artifact>    ... and for each version it published

Statuses follow SageMaker's model registry: PendingManualApproval, Approved, Rejected. A rejected
version never becomes current, and a decided version cannot change its status. One DAG run registers
one version (its id derives from the run), so a retried evaluation rewrites its own version instead
of adding another.

Each version records the data interval its run covered (`interval_start`, `interval_end`). "Current"
is the approved version of the newest interval: an approval moves `current.json` only to a version
whose interval ends no earlier than the current one's (the same interval: the later approval wins).
So a backfill of older weeks, or a person approving an older week's version late, never replaces
a newer current version: that version stays Approved, is published under `versions/<version>/`,
and its record says why it is not current (`not_current`). Versions without an interval (written
before intervals were recorded, or registered by hand) follow approval time, as before. A run is
compared with `approved_before(its interval start)`: the version approved for the interval before
it, not the newest one.

Training runs write here while inference runs read, and two runs (or a person and a run) may decide
at once. Every read-change-write of `version.json` and `current.json` is a compare-and-swap
(operators.kit.conditional): a write computed from a state that another writer has since changed
is redone from the new state, never laid over it. So a decided version stays decided (register
and a second, different decision both see it), and `current.json` moves only to a version that
comes after the one it names (newer interval, then later approval), whatever order the writes
arrive in.
"""
from __future__ import annotations

import hashlib
import json
import time
from datetime import datetime, timezone
from typing import Any, Callable

from operators.kit import conditional
from operators.kit.engine import data_root, location, safe_name

PENDING = "PendingManualApproval"
APPROVED = "Approved"
REJECTED = "Rejected"
STATUSES = (PENDING, APPROVED, REJECTED)


class RegistryError(RuntimeError):
    pass


def version_id(data_interval_end: str, run_id: str) -> str:
    """Sortable by the data window it was trained on; unique per run."""
    return f"{safe_name(data_interval_end)[:19]}_{hashlib.sha256(run_id.encode()).hexdigest()[:8]}"


def instant(value: Any) -> datetime | None:
    """An interval bound (ISO 8601 text or a datetime) as an aware datetime; None when there is none. Naive: UTC."""
    if value is None or value == "":
        return None
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def interval_end(record: dict[str, Any] | None) -> datetime | None:
    return instant((record or {}).get("interval_end"))


def comes_after(mine: dict[str, Any], theirs: dict[str, Any]) -> bool:
    """Whether approved `mine` should replace `theirs` as current: each is a version record or a `current.json`
    pointer. By interval end first (an older interval never replaces a newer one); for the same interval, or
    when either has no interval recorded, by approval time, then version id."""
    mine_end, their_end = interval_end(mine), interval_end(theirs)
    if mine_end is not None and their_end is not None and mine_end != their_end:
        return mine_end > their_end

    def approved(record: dict[str, Any]) -> tuple[float, str]:
        at = record.get("approved_at", record.get("decided_at"))
        return float(at) if at is not None else 0.0, str(record["version"])

    return approved(mine) > approved(theirs)


class Registry:
    def __init__(self, root: str, model: str, aws_conn_id: str | None = "aws_default"):
        self.model = model
        self.root = root.rstrip("/")
        self.aws_conn_id = aws_conn_id
        self.top = location(self.root, aws_conn_id)  # one connection lookup for the registry and what it publishes
        self.loc = self.top.child("registry", safe_name(model))

    def version_dir(self, version: str) -> str:
        return self.loc.join("versions", version)

    def _version_file(self, version: str) -> str:
        return self.loc.join("versions", version, "version.json")

    def get(self, version: str) -> dict[str, Any]:
        try:
            return self.loc.read_json(self._version_file(version))
        except FileNotFoundError:
            raise RegistryError(f"model {self.model!r} has no version {version!r}") from None

    def versions(self) -> list[dict[str, Any]]:
        folder = self.loc.join("versions")
        if not self.loc.fs.exists(folder):
            return []
        paths = [self.loc.full(p) for p in self.loc.fs.glob(self.loc.join("versions", "*", "version.json"))]
        records = [self.loc.read_json(p) for p in paths]
        return sorted(records, key=lambda r: (r["created_at"], r["version"]))

    def current(self) -> dict[str, Any] | None:
        """The current version (the approved version of the newest interval), or None before the first approval."""
        try:
            pointer = self.loc.read_json(self.loc.join("current.json"))
        except FileNotFoundError:
            return None
        return self.get(pointer["version"])

    def approved_before(self, start: Any) -> dict[str, Any] | None:
        """The version to compare a run of the interval starting at `start` with: the approved version of the latest
        interval ending at or before `start` (for one interval approved more than once, the last approval).

        None before any such approval: the run is then judged on its own metrics. `start` None (no interval known),
        or a registry whose current version records no interval (written before intervals were recorded): the
        current version, as before."""
        begin = instant(start)
        head = self.current()
        if begin is None or (head is not None and interval_end(head) is None):
            return head
        best = None
        for record in self.versions():
            end = interval_end(record)
            if record["status"] != APPROVED or end is None or end > begin:
                continue
            if best is None or comes_after(record, best):
                best = record
        return best

    def _update_json(self, path: str, change: Callable[[dict[str, Any] | None], dict[str, Any] | None]) -> bool:
        """Compare-and-swap `path` with `change(record)`; True when it wrote, False when `change` returned None."""
        def change_bytes(data: bytes | None) -> bytes | None:
            value = change(json.loads(data) if data is not None else None)
            return None if value is None else json.dumps(value, indent=1, sort_keys=True, default=str).encode()

        return conditional.update(self.loc, path, change_bytes) is not None

    def register(self, version: str, *, metrics: dict[str, Any], input_stats: dict[str, Any],
                 lineage: dict[str, Any], proposed: str, reasons: list[str], artifact: str | None = None,
                 limits: list[dict[str, Any]] | None = None,
                 interval: tuple[Any, Any] | None = None) -> dict[str, Any]:
        """Create `version` as PendingManualApproval and return its record.

        `interval`: the (start, end) of the data the run covered (ISO 8601 or datetimes); it orders the version
        against the current one when it is approved (see the module docstring).

        A retried evaluation rewrites its still-pending version. When `version` is already
        decided (the whole run was cleared and ran again), the new evaluation becomes a new
        version `<version>-r2`, `-r3`, ...: a decided version is final, also when the decision
        lands while this evaluation is being registered.
        """
        start, end = (instant(bound) for bound in (interval or (None, None)))
        if start is not None and end is not None and start > end:
            raise RegistryError(f"version {version} of {self.model!r}: its interval starts at {start.isoformat()}, "
                                f"after its end {end.isoformat()}")
        bounds = {"interval_start": start.isoformat() if start else None,
                  "interval_end": end.isoformat() if end else None}
        base, attempt = version, 1
        while True:
            written: dict[str, Any] = {}

            def pending(existing: dict[str, Any] | None) -> dict[str, Any] | None:
                if existing is not None and existing["status"] != PENDING:
                    return None
                written.clear()
                written.update({
                    "model": self.model, "version": version, "status": PENDING,
                    "created_at": existing["created_at"] if existing else time.time(),
                    "metrics": metrics, "input_stats": input_stats, "lineage": lineage, "artifact": artifact,
                    "limits": limits, "proposed_decision": proposed, "decision_reasons": reasons,
                    "decided_by": None, "decided_at": None, **bounds,
                })
                return written

            if self._update_json(self._version_file(version), pending):
                return written
            attempt += 1
            version = f"{base}-r{attempt}"

    def decide(self, version: str, status: str, *, by: str, note: str = "") -> dict[str, Any]:
        """Record `status` (Approved or Rejected) for a pending `version`; an approval moves `current` to it unless
        the current version covers a newer interval.

        Deciding again with the same status returns the recorded decision (a retried task); a
        different status than the one recorded, by anyone and however close in time, is refused.
        An approved version that did not become current carries `not_current` (the current
        version and why) in its record and in the returned one; `current` says whether it is.
        """
        if status not in (APPROVED, REJECTED):
            raise RegistryError(f"a decision is {APPROVED} or {REJECTED}, not {status!r}")
        record: dict[str, Any] = {}

        def decided(existing: dict[str, Any] | None) -> dict[str, Any] | None:
            if existing is None:
                raise RegistryError(f"model {self.model!r} has no version {version!r}")
            record.clear()
            record.update(existing)
            if existing["status"] == status:
                return None
            if existing["status"] != PENDING:
                raise RegistryError(
                    f"version {version} of {self.model!r} is already {existing['status']} (by "
                    f"{existing.get('decided_by')} at {_when(existing.get('decided_at'))}); a decided version is "
                    f"final, so this {status} decision by {by} was not recorded. "
                    + ("To use this model, run the training for its week again: that registers a new version to "
                       "approve" if status == APPROVED else
                       "To stop using it, approve a newer version: current moves to the approved version of the newest "
                       "interval"))
            record.update(status=status, decided_by=by, decided_at=time.time(), decision_note=note)
            return record

        self._update_json(self._version_file(version), decided)
        if record["status"] != APPROVED:
            return record
        # also when the decision was already recorded: a retried task may have stopped before this
        head = self._advance_current(record)
        record["current"] = head["version"] == record["version"]
        if not record["current"]:
            record["not_current"] = {"current": head["version"], "reason": self.why_not_current(record, head)}
            print(f"version {version} of {self.model!r} approved but not made current: "
                  f"{record['not_current']['reason']}")

            def noted(existing: dict[str, Any] | None) -> dict[str, Any] | None:
                if existing is None or existing.get("not_current") == record["not_current"]:
                    return None
                return {**existing, "not_current": record["not_current"]}

            self._update_json(self._version_file(version), noted)
        return record

    def why_not_current(self, record: dict[str, Any], head: dict[str, Any]) -> str:
        """Why approved `record` is not current, the current pointer being `head`."""
        mine, theirs = interval_end(record), interval_end(head)
        if mine is not None and theirs is not None and mine < theirs:
            return (f"its data interval ends {mine.isoformat()}, before the current version {head['version']}'s "
                    f"({theirs.isoformat()}): an older interval (a backfill, or a late approval) never replaces a "
                    f"newer current version. It stays {APPROVED} and is published under versions/{record['version']}/")
        return (f"the current version {head['version']} covers the same or a later interval and was approved at "
                f"{_when(head.get('approved_at'))}, after this one: the later approval stays current")

    def _advance_current(self, record: dict[str, Any]) -> dict[str, Any]:
        """Point `current.json` at `record` unless the version it names comes after it (`comes_after`); returns the
        pointer as it is afterwards."""
        after: dict[str, Any] = {}

        def later(pointer: dict[str, Any] | None) -> dict[str, Any] | None:
            after.clear()
            if pointer is not None and (pointer["version"] == record["version"] or not comes_after(record, pointer)):
                after.update(pointer)
                return None
            after.update({"version": record["version"], "approved_at": record["decided_at"],
                          "interval_end": record.get("interval_end")})
            return dict(after)

        self._update_json(self.loc.join("current.json"), later)
        return after

    def publish(self, version: str) -> str:
        """Copy an approved version's artifact to `published/<model>/versions/<version>/`; bring `current/` up to date.

        Returns the URI of the current copy when `version` is the current version, else of its
        versioned copy: publishing an older version again (a cleared task) never moves `current/`
        back. Each file is replaced atomically, so a reader sees the old or the new artifact,
        never a mix; `current/version.json` is written after the artifact.
        """
        record = self.get(version)
        if record["status"] != APPROVED:
            raise RegistryError(f"version {version} of {self.model!r} is {record['status']}; only an {APPROVED} "
                                f"version is published")
        artifact = record.get("artifact")
        if not artifact:
            raise RegistryError(f"version {version} of {self.model!r} has no artifact recorded in "
                                f"{self._version_file(version)}: nothing to publish")
        out = self.top.child("published", safe_name(self.model))
        versioned = out.join("versions", version, artifact)
        source = self.loc.join("versions", version, artifact)
        try:
            data = self.loc.read_bytes(source)
        except FileNotFoundError:
            raise RegistryError(f"version {version} of {self.model!r}: its artifact {source} does not exist: nothing "
                                "to publish; run the training for its week again") from None
        check_artifact(data, source, self.model, version)
        out.write_bytes(versioned, data)
        if self._sync_published_current(out) == version:
            return out.join("current", artifact)
        reason = (record.get("not_current") or {}).get("reason") or "another version is current"
        print(f"version {version} of {self.model!r} published to {versioned} only, not to current/: {reason}")
        return versioned

    def _sync_published_current(self, out) -> str | None:
        """Copy the current version's published artifact to `current/`; returns the version `current/` then holds.

        Two publishes may interleave (an approval that lands while an older version is being
        copied). Each one copies whatever version is current in the registry, then checks that it
        still is; one that finds the registry moved on copies again. The last copy made is
        therefore always followed by a check that saw its version current.
        """
        for _ in range(conditional.UPDATE_ATTEMPTS):
            head = self.current()
            if head is None or not head.get("artifact"):
                return None
            versioned = out.join("versions", head["version"], head["artifact"])
            data = out.read_many([versioned]).get(versioned)
            if data is None:
                return None  # not copied yet: its own publish moves current/ when it does
            out.write_bytes(out.join("current", head["artifact"]), data)
            out.write_json(out.join("current", "version.json"),
                           {"version": head["version"], "artifact": versioned, "published_at": time.time()})
            if (self.current() or {}).get("version") == head["version"]:
                return head["version"]
        raise RegistryError(f"the current version of {self.model!r} kept changing while {out.join('current')} was "
                            f"being published; publish it again once approvals have settled")


def check_artifact(data: bytes, uri: str, model: str, version: str) -> None:
    """RegistryError naming the file and the version when a Parquet artifact's footer cannot be read: a damaged
    artifact is not published, so nothing downstream starts work on it."""
    if not uri.lower().endswith(".parquet"):
        return
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pq.read_schema(pa.BufferReader(data))
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise RegistryError(f"version {version} of {model!r}: its artifact {uri} cannot be read as Parquet "
                            f"({type(exc).__name__}: {str(exc).strip()}): not published; run the training for its "
                            "week again") from None


def _when(timestamp: float | None) -> str:
    if timestamp is None:
        return "an unknown time"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(float(timestamp)))


def publish(model: str, version: str, root: str | None = None, aws_conn_id: str | None = "aws_default") -> str:
    """Publish an approved version of `model` under DATA_ROOT (or `root`); return the current artifact's URI."""
    return Registry(root or data_root(), model, aws_conn_id).publish(version)
