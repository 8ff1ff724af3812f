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
"""
from __future__ import annotations

import hashlib
import time
from typing import Any

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
        self.loc = location(f"{root.rstrip('/')}/registry/{safe_name(model)}", aws_conn_id)

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

    def _existing(self, version: str) -> dict[str, Any] | None:
        try:
            return self.get(version)
        except RegistryError:
            return None

    def register(self, version: str, *, metrics: dict[str, Any], input_stats: dict[str, Any],
                 lineage: dict[str, Any], proposed: str, reasons: list[str], artifact: str | None = None,
                 limits: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """Create `version` as PendingManualApproval and return its record.

        A retried evaluation rewrites its still-pending version. When `version` is already
        decided (the whole run was cleared and ran again), the new evaluation becomes a new
        version `<version>-r2`, `-r3`, ...: a decided version is final.
        """
        base, attempt = version, 1
        existing = self._existing(version)
        while existing and existing["status"] != PENDING:
            attempt += 1
            version = f"{base}-r{attempt}"
            existing = self._existing(version)
        record = {
            "model": self.model, "version": version, "status": PENDING,
            "created_at": existing["created_at"] if existing else time.time(),
            "metrics": metrics, "input_stats": input_stats, "lineage": lineage, "artifact": artifact, "limits": limits,
            "proposed_decision": proposed, "decision_reasons": reasons, "decided_by": None, "decided_at": None,
        }
        self.loc.write_json(self._version_file(version), record)
        return record

    def decide(self, version: str, status: str, *, by: str, note: str = "") -> dict[str, Any]:
        if status not in (APPROVED, REJECTED):
            raise RegistryError(f"a decision is {APPROVED} or {REJECTED}, not {status!r}")
        record = self.get(version)
        if record["status"] == status:
            return record  # a retried decision task
        if record["status"] != PENDING:
            raise RegistryError(f"version {version} is already {record['status']}; a decided version is final")
        record.update(status=status, decided_by=by, decided_at=time.time(), decision_note=note)
        self.loc.write_json(self._version_file(version), record)
        if status == APPROVED:
            self.loc.write_json(self.loc.join("current.json"), {"version": version, "approved_at": record["decided_at"]})
        return record

    def publish(self, version: str) -> str:
        """Copy an approved version's artifact to `published/<model>/versions/<version>/` and `current/`.

        Returns the URI of the current copy. Each file is replaced atomically, so a reader sees the
        old or the new artifact, never a mix; `current/version.json` is written last.
        """
        record = self.get(version)
        if record["status"] != APPROVED:
            raise RegistryError(f"version {version} of {self.model!r} is {record['status']}; only an {APPROVED} "
                                f"version is published")
        artifact = record.get("artifact")
        if not artifact:
            raise RegistryError(f"version {version} of {self.model!r} has no artifact recorded in "
                                f"{self._version_file(version)}: nothing to publish")
        source = location(self.version_dir(version), self.aws_conn_id)
        data = source.read_bytes(source.join(artifact))
        out = location(f"{self.root}/published/{safe_name(self.model)}", self.aws_conn_id)
        versioned = out.join("versions", version, artifact)
        current = out.join("current", artifact)
        out.write_bytes(versioned, data)
        out.write_bytes(current, data)
        out.write_json(out.join("current", "version.json"),
                       {"version": version, "artifact": versioned, "published_at": time.time()})
        return current


def publish(model: str, version: str, root: str | None = None, aws_conn_id: str | None = "aws_default") -> str:
    """Publish an approved version of `model` under DATA_ROOT (or `root`); return the current artifact's URI."""
    return Registry(root or data_root(), model, aws_conn_id).publish(version)
