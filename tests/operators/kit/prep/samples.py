"""Sample inputs and read-back helpers shared by the prep tests."""
from __future__ import annotations

import datetime as dt
import hashlib

import numpy as np
import pandas as pd
from batch_worker.schema import Column, InputSchema

from operators.kit.prep import read_manifest


SCHEMA = InputSchema(
    columns=(
        Column("segment", "string"),
        Column("product", "string"),
        Column("date", "date"),
        Column("price", "float", min=0.01),
        Column("quantity", "float", min=0, max=1000),
        Column("promo", "string", nullable=True),
    ),
    unit_key=("segment", "product"),
    unique_key=("segment", "product", "date"),
    time_column="date",
)


DAY0 = dt.date(2026, 1, 1)


def sales(units: int = 40, days: int = 10, seed: int = 0) -> pd.DataFrame:
    """Clean rows: every unit (segment, product) on every day, in a shuffled order."""
    rng = np.random.default_rng(seed)
    unit = np.repeat(np.arange(units), days)
    day = np.tile(np.arange(days), units)
    frame = pd.DataFrame({
        "segment": [f"S{u % 3}" for u in unit],
        "product": [f"P{u:03d}" for u in unit],
        "date": [DAY0 + dt.timedelta(days=int(d)) for d in day],
        "price": np.round(rng.uniform(1, 50, len(unit)), 2),
        "quantity": rng.integers(0, 100, len(unit)).astype(float),
        "promo": rng.choice(["yes", None], len(unit)),
    })
    return frame.sample(frac=1, random_state=seed).reset_index(drop=True)


def batches(result) -> pd.DataFrame:
    """Every row of every batch, with its batch_id."""
    manifest = read_manifest(result.manifest_uri)
    frames = [pd.read_parquet(uri).assign(batch_id=batch_id)
              for batch_id, uri in zip(manifest["batch_id"], manifest["uri"])]
    return pd.concat(frames, ignore_index=True)


def expected_bucket(segment: str, product: str, bucket_count: int) -> int:
    """The documented bucket algorithm, computed without DuckDB."""
    digest = hashlib.md5(f"{segment}\x1f{product}".encode()).hexdigest()
    return int(digest[:14], 16) % bucket_count


def spoiled_csv(path) -> tuple[pd.DataFrame, dict[str, int]]:
    """Clean rows as CSV text plus one or more rows of each bad kind, and the expected counts."""
    frame = sales().astype({"price": str, "quantity": str, "date": str})
    frame["note"] = "undeclared column"
    bad = {
        "null:segment": [{"segment": None}],
        "null:quantity": [{"quantity": "nan"}, {"quantity": None}],
        "non_numeric:price": [{"price": "n/a"}],
        "non_date:date": [{"date": "yesterday"}],
        "out_of_range:price": [{"price": "0"}],
        "out_of_range:quantity": [{"quantity": "1000.5"}, {"quantity": "-1"}],
    }
    for i, (reason, changes) in enumerate(bad.items()):
        for j, change in enumerate(changes):
            for column, value in change.items():
                frame.loc[10 * i + j, column] = value
    copies = frame.iloc[[100, 100]]  # the same values twice more: duplicates, one row of three kept
    conflicting = frame.iloc[[150]].assign(price="99.5")  # the same key, another price: neither row kept
    frame = pd.concat([frame, copies, conflicting], ignore_index=True)
    frame.to_csv(path, index=False)
    expected = {reason: len(changes) for reason, changes in bad.items()} | {"duplicate": 2, "conflicting_duplicate": 2}
    return frame, expected


CSV_HEADER = "segment,product,date,price,quantity,promo\n"


def good_lines(count: int, first: int = 0) -> list[str]:
    return [f"S{i % 3},P{i:04d},2026-01-0{1 + i % 5},{1 + i % 40}.5,{i % 90},yes\n" for i in range(first, first + count)]


def quarantine_of(result) -> pd.DataFrame:
    return pd.read_parquet(result.quarantine_uri)


NUMERIC_SCHEMA = InputSchema(
    columns=(*SCHEMA.columns, Column("discount", "float", nullable=True), Column("stock", "int", nullable=True)),
    unit_key=SCHEMA.unit_key, unique_key=SCHEMA.unique_key, time_column=SCHEMA.time_column)


def read_back(result) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(good rows, quarantined rows) of a prepare."""
    return batches(result), (quarantine_of(result) if result.quarantine_uri else pd.DataFrame())


def batches_s3(result, options) -> pd.DataFrame:
    import s3fs

    fs = s3fs.S3FileSystem(**options)
    manifest = read_manifest(result.manifest_uri, options)
    return pd.concat([pd.read_parquet(fs.open(uri, "rb")) for uri in manifest["uri"]], ignore_index=True)
