"""Deterministic input for the no-op workload: `units` units of `rows_per_unit` rows each.

The same arguments always give the same rows, so prep gives the same batch content hashes and a
second run finds every batch done.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from batch_worker.runtime import parquet_bytes
from batch_worker.storage import Location


def frame(units: int, rows_per_unit: int = 3) -> pd.DataFrame:
    if units < 1 or rows_per_unit < 1:
        raise ValueError(f"units and rows_per_unit must be at least 1, got {units} and {rows_per_unit}")
    unit = np.repeat(np.arange(units), rows_per_unit)
    seq = np.tile(np.arange(rows_per_unit), units)
    width = max(6, len(str(units - 1)))
    return pd.DataFrame({
        "unit_id": [f"u{u:0{width}d}" for u in unit],
        "seq": seq.astype("int64"),
        "value": ((unit * 7919 + seq * 104729) % 1000) / 10.0,
    })


def write(uri: str, units: int, rows_per_unit: int = 3, storage_options: dict | None = None) -> str:
    """Write the input as one Parquet file at `uri` (a file path or s3:// key); return `uri`."""
    location = Location.parse(uri, storage_options)
    location.write_bytes(location.uri, parquet_bytes(frame(units, rows_per_unit)))
    return location.uri
