"""What a prepare writes under `out_uri` and returns, and the manifest the engine reads back.

- `batches/bucket=<id>/data_0.parquet`: the good rows, one file per non-empty bucket. A row's bucket
  is a stable md5 of its unit key modulo `bucket_count`, so every row of a unit lands in the same
  batch, on every run and on every engine (`sql.bucketing_sql`). Only the schema's columns are written,
  typed (columns that arrived as text, e.g. from CSV, are parsed).
- `quarantine.parquet`: the bad rows (only when there are some): every input column as read, then
  `_prep_reason`, `_prep_file` and, for a CSV line that could not be parsed, `_prep_line` (the
  record's first line in the file; the header is line 1) and `_prep_raw` (its text, at most 10,000
  bytes). The reasons are listed in `quarantine.py`.
- `manifest.parquet`: one row per batch (batch_id, uri, rows, units, content_hash).
- `_PREPARED.json`, written last: the fingerprint of what was prepared and the counts (`reuse.py`).
"""
from __future__ import annotations

import dataclasses
import os
import shutil
from dataclasses import dataclass

import pandas as pd
from batch_worker.schema import RESERVED_PREFIX
from batch_worker.storage import Location

BATCHES_DIR = "batches"
MANIFEST_FILE = "manifest.parquet"
PREPARED_FILE = "_PREPARED.json"
QUARANTINE_FILE = "quarantine.parquet"
#: The partition folder of a batch (`bucket=<id>`); the batch files themselves hold only schema columns.
BUCKET_COLUMN = "bucket"
REASON_COLUMN = RESERVED_PREFIX + "reason"
FILE_COLUMN = RESERVED_PREFIX + "file"
LINE_COLUMN = RESERVED_PREFIX + "line"
RAW_COLUMN = RESERVED_PREFIX + "raw"
MANIFEST_COLUMNS = ("batch_id", "uri", "rows", "units", "content_hash")


@dataclass
class PrepResult:
    """What `prepare` wrote and counted; `to_dict()` is small enough for an XCom."""

    out_uri: str
    manifest_uri: str
    quarantine_uri: str | None
    rows_in: int
    rows_ok: int
    rows_quarantined: int
    quarantined_by_reason: dict[str, int]
    units: int
    batches: int
    bucket_count: int  # the buckets the rows were hashed into: the limit, or fewer chosen by rows_per_batch

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _write_manifest(out: Location, manifest: pd.DataFrame) -> None:
    """`manifest` as `<out>/manifest.parquet`, written atomically (for the paths that build it as a frame)."""
    from batch_worker.runtime import parquet_bytes

    out.write_bytes(out.join(MANIFEST_FILE), parquet_bytes(manifest))


def _clear_outputs(out: Location) -> None:
    """Remove what an earlier prep wrote under `out`, its completion marker and manifest first."""
    for name in (PREPARED_FILE, MANIFEST_FILE, QUARANTINE_FILE):
        if out.fs.exists(out.join(name)):
            out.fs.rm(out.join(name))
    batches = out.join(BATCHES_DIR)
    if out.remote:
        if out.fs.exists(batches):
            out.fs.rm(batches, recursive=True)
    elif os.path.isdir(batches):
        shutil.rmtree(batches)


def _upload(staging: Location, out: Location) -> None:
    """Copy the staged outputs to `out`, manifest last."""
    manifest = staging.join(MANIFEST_FILE)
    local, remote = [], []
    for directory, _, names in os.walk(staging.uri):
        for path in (os.path.join(directory, name) for name in names):
            if path != manifest:
                local.append(path)
                remote.append(out.join(os.path.relpath(path, staging.uri).replace(os.sep, "/")))
    if local:
        out.fs.put(local, remote)
    out.fs.put(manifest, out.join(MANIFEST_FILE))
    out.fs.invalidate_cache()


def read_manifest(manifest_uri: str, storage_options: dict | None = None) -> pd.DataFrame:
    """The manifest `prepare` wrote, sorted by batch_id."""
    location = Location.parse(manifest_uri, storage_options)
    with location.fs.open(location.uri, "rb") as handle:
        frame = pd.read_parquet(handle)
    return frame[list(MANIFEST_COLUMNS)].sort_values("batch_id", ignore_index=True)
