"""Cache keys, the output layout and the worklist: the contract between the house operator and the runtime.

A batch's output lives at `<output root>/<key>/`, where key = hash(batch content hash, workload name,
workload code version, workload parameters). The folder holds

    result.parquet   the workload's output table
    _DONE.json       the done-marker, written last; a batch is done when it exists and names the key
    _FAILED.json     the last failure (class and first error line); never counts as done

Because the folder is named by the key, a batch that ran twice is stored once, a second run on the
same data and parameters finds every marker and computes nothing, and a changed parameter or
code version gives new keys and recomputes.

The worklist is one JSON document per submitted array job: the workload, its parameters, the
output root and the pending batches. Child `i` of the array takes items
`[i * batches_per_child, (i + 1) * batches_per_child)`.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any

RESULT_FILE = "result.parquet"
DONE_FILE = "_DONE.json"
FAILED_FILE = "_FAILED.json"
WORKLIST_FORMAT = 1
#: Starts the log line in which a child reports a failure it could not record in `_FAILED.json`.
FAILURE_LINE_TAG = "airbatch-failure"


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def params_digest(params: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json(params).encode()).hexdigest()[:16]


def cache_key(content_hash: str, workload: str, version: str, params: dict[str, Any]) -> str:
    """The key of one batch's output; any change to data, code version or parameters changes it."""
    text = canonical_json({"content": content_hash, "workload": workload, "version": str(version),
                           "params": params})
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def is_valid_done(raw: bytes | None, key: str) -> bool:
    """Whether a done-marker's bytes belong to `key` (a truncated or foreign marker is not done)."""
    if not raw:
        return False
    try:
        marker = json.loads(raw)
    except ValueError:
        return False
    return isinstance(marker, dict) and marker.get("key") == key and marker.get("status") == "done"


def child_slice(items: list[dict], batches_per_child: int, index: int) -> list[dict]:
    if batches_per_child < 1:
        raise ValueError(f"batches_per_child must be at least 1, got {batches_per_child}")
    return items[index * batches_per_child:(index + 1) * batches_per_child]


def children_needed(pending: int, batches_per_child: int) -> int:
    return -(-pending // batches_per_child)


def failure_line(record: dict[str, Any]) -> str:
    """A log line carrying a failure record, for when the output store refuses the record itself."""
    return f"{FAILURE_LINE_TAG} {json.dumps(record, sort_keys=True, default=str)}"


def parse_failure_line(line: str) -> dict[str, Any] | None:
    """The record in a log line written by `failure_line` (None for any other line)."""
    _, tag, rest = line.partition(FAILURE_LINE_TAG + " ")
    if not tag:
        return None
    try:
        record = json.loads(rest)
    except ValueError:
        return None
    return record if isinstance(record, dict) and "class" in record and "error" in record else None
