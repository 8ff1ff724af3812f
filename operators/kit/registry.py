"""A model registry under DATA_ROOT: versions with a status, their metrics, input statistics and lineage.

    registry/<model>/versions/<version>/version.json   status, metrics, input_stats, lineage, limits, decision
    registry/<model>/versions/<version>/report.html    the evaluation report
    registry/<model>/versions/<version>/<artifact>     the run's outputs (the evaluator's `artifact`)
    registry/<model>/current.json                      the last approved version (its id and when)
    published/<model>/current/<artifact>               what `publish` wrote for the last approved version
    published/<model>/versions/<version>/<artifact>    ... and for each version it published

Statuses follow SageMaker's model registry: PendingManualApproval, Approved, Rejected. "Current" is
the version approved last; a rejected version never becomes current, and a decided version cannot
change its status. One DAG run registers one version (its id derives from the run), so a retried
evaluation rewrites its own version instead of adding another.

Training runs write here while inference runs read, and two runs (or a person and a run) may decide
at once. Every read-change-write of `version.json` and `current.json` is a compare-and-swap
(operators.kit.conditional): a write computed from a state that another writer has since changed
is redone from the new state, never laid over it. So a decided version stays decided (register
and a second, different decision both see it), and `current.json` moves only to a version
approved later than the one it names, whatever order the writes arrive in.
"""
from __future__ import annotations

import hashlib
import json
import time
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
        """The last approved version, or None before the first approval."""
        try:
            pointer = self.loc.read_json(self.loc.join("current.json"))
        except FileNotFoundError:
            return None
        return self.get(pointer["version"])

    def _update_json(self, path: str, change: Callable[[dict[str, Any] | None], dict[str, Any] | None]) -> bool:
        """Compare-and-swap `path` with `change(record)`; True when it wrote, False when `change` returned None."""
        def change_bytes(data: bytes | None) -> bytes | None:
            value = change(json.loads(data) if data is not None else None)
            return None if value is None else json.dumps(value, indent=1, sort_keys=True, default=str).encode()

        return conditional.update(self.loc, path, change_bytes) is not None

    def register(self, version: str, *, metrics: dict[str, Any], input_stats: dict[str, Any],
                 lineage: dict[str, Any], proposed: str, reasons: list[str], artifact: str | None = None,
                 limits: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """Create `version` as PendingManualApproval and return its record.

        A retried evaluation rewrites its still-pending version. When `version` is already
        decided (the whole run was cleared and ran again), the new evaluation becomes a new
        version `<version>-r2`, `-r3`, ...: a decided version is final, also when the decision
        lands while this evaluation is being registered.
        """
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
                    "decided_by": None, "decided_at": None,
                })
                return written

            if self._update_json(self._version_file(version), pending):
                return written
            attempt += 1
            version = f"{base}-r{attempt}"

    def decide(self, version: str, status: str, *, by: str, note: str = "") -> dict[str, Any]:
        """Record `status` (Approved or Rejected) for a pending `version`; an approval moves `current` to it.

        Deciding again with the same status returns the recorded decision (a retried task); a
        different status than the one recorded, by anyone and however close in time, is refused.
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
                       "To stop using it, approve a newer version: current moves to the version approved last"))
            record.update(status=status, decided_by=by, decided_at=time.time(), decision_note=note)
            return record

        self._update_json(self._version_file(version), decided)
        if record["status"] == APPROVED:
            self._advance_current(record)  # also when the decision was already recorded: it may have stopped here
        return record

    def _advance_current(self, record: dict[str, Any]) -> None:
        """Point `current.json` at `record` unless it names a version approved at the same time or later."""
        mine = (float(record["decided_at"]), record["version"])

        def later(pointer: dict[str, Any] | None) -> dict[str, Any] | None:
            if pointer is not None and (float(pointer["approved_at"]), pointer["version"]) >= mine:
                return None
            return {"version": record["version"], "approved_at": record["decided_at"]}

        self._update_json(self.loc.join("current.json"), later)

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
