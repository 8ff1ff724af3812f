"""Synthetic input for the pricing workload: daily sales per (segment, location, product).

Deterministic for a seed: unit parameters come from one seeded stream and each file's rows from
a stream seeded by (seed, day, part), so no file depends on how the others were generated.
Files are hive-partitioned by date (`date=YYYY-MM-DD/part-0.parquet`, or `.csv`), one day (or one
`ROWS_PER_FILE` slice of a day) in memory at a time, and also carry the `date` column itself so a
file read on its own is complete (read the directory with DuckDB, or with pandas/pyarrow passing
`partitioning=None`).

Units are laid out in blocks of `KIND_PERIOD`: within each block one unit has a constant price, one
sells on only `SPARSE_DAYS` days and one has a unit cost above its current price; about
`INELASTIC_SHARE` of the others have an elasticity between -0.9 and -0.3, the rest between -3.5
and -1.1 around their segment's mean. `unit_table(units, seed)` returns the ground truth.

Bad rows on purpose (`bad_row_fraction` of all rows, kinds in turn): a null key, a zero or negative
price, a NaN quantity, an exact duplicate of another row of the same day (it replaces a row, so
the row count is unchanged) and, in CSV only, "n/a" in the price or quantity column.

CLI: python -m operators.pipelines.pricing.pricing_data --out DIR --rows N [--units U] [--days D] [--format csv|parquet]
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

DEFAULT_DAYS = 84
ROWS_PER_FILE = 1_000_000
SPARSE_DAYS = 5
KIND_PERIOD = 50
CONSTANT_PRICE_SLOT, SPARSE_SLOT, COST_ABOVE_PRICE_SLOT = 7, 23, 41
INELASTIC_SHARE = 0.08
BAD_KINDS = ("null_key", "bad_price", "nan_quantity", "duplicate")
CSV_BAD_KINDS = (*BAD_KINDS, "non_numeric")
FORMATS = ("parquet", "csv")
KEY_COLUMNS = ("segment", "location", "product")
NUMERIC_COLUMNS = ("price", "quantity", "unit_cost", "current_price")


def key_layout(units: int) -> tuple[int, int, int]:
    """(segments, locations, products) with segments * locations * products >= units."""
    segments = min(20, max(1, -(-units // 40)))
    per_segment = -(-units // segments)
    locations = min(1000, max(1, int(np.ceil(np.sqrt(per_segment) / 2))))
    products = -(-per_segment // locations)
    return segments, locations, products


def _key_codes(units: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    _, locations, products = key_layout(units)
    unit = np.arange(units)
    return unit // (locations * products), (unit // products) % locations, unit % products


def _key_names(units: int) -> tuple[list[str], list[str], list[str]]:
    segments, locations, products = key_layout(units)
    return (
        [f"S{i:02d}" for i in range(segments)],
        [f"L{i:03d}" for i in range(locations)],
        [f"P{i:04d}" for i in range(products)],
    )


def unit_table(units: int, seed: int = 0) -> pd.DataFrame:
    """Ground truth per unit (index = unit number): keys, kind, true elasticity, base demand, cost, price."""
    rng = np.random.default_rng([seed, 0])
    segment, location, product = _key_codes(units)
    segment_names, location_names, product_names = _key_names(units)
    slot = np.arange(units) % KIND_PERIOD

    segment_mean = rng.uniform(-2.8, -1.6, len(segment_names))
    elastic = np.clip(segment_mean[segment] + rng.normal(0.0, 0.35, units), -3.5, -1.1)
    inelastic = rng.random(units) < INELASTIC_SHARE
    elasticity = np.where(inelastic, rng.uniform(-0.9, -0.3, units), elastic)
    base_demand = np.clip(np.exp(rng.normal(np.log(40.0), 0.7, units)), 2.0, 1000.0)
    current_price = np.maximum(np.round(np.exp(rng.normal(np.log(10.0), 0.8, units)), 2), 0.5)
    cost_ratio = np.where(
        slot == COST_ABOVE_PRICE_SLOT, rng.uniform(1.15, 1.4, units), rng.uniform(0.35, 0.7, units)
    )
    kind = np.where(inelastic, "inelastic", "regular").astype(object)
    kind[slot == CONSTANT_PRICE_SLOT] = "constant_price"
    kind[slot == SPARSE_SLOT] = "sparse"
    kind[slot == COST_ABOVE_PRICE_SLOT] = "cost_above_price"
    return pd.DataFrame(
        {
            "segment": np.asarray(segment_names, dtype=object)[segment],
            "location": np.asarray(location_names, dtype=object)[location],
            "product": np.asarray(product_names, dtype=object)[product],
            "kind": kind,
            "true_elasticity": elasticity,
            "base_demand": base_demand,
            "unit_cost": np.round(current_price * cost_ratio, 2),
            "current_price": current_price,
        }
    )


def _sparse_day(day: int | np.ndarray, days: int):
    """Whether a sparse unit sells on `day`: every (days // SPARSE_DAYS)-th day, SPARSE_DAYS times."""
    step = max(1, days // SPARSE_DAYS)
    return (day % step == 0) & (day // step < SPARSE_DAYS)


def capacity(units: int, days: int) -> int:
    """Rows that `units` units over `days` days produce before truncation to the requested count."""
    sparse_units = (units + KIND_PERIOD - SPARSE_SLOT - 1) // KIND_PERIOD
    sparse_rows = int(np.count_nonzero(_sparse_day(np.arange(days), days)))
    return units * days - sparse_units * (days - sparse_rows)


def _smallest(fits, high: int) -> int:
    low = 1
    while low < high:
        middle = (low + high) // 2
        if fits(middle):
            high = middle
        else:
            low = middle + 1
    return low


def plan(rows: int, units: int | None, days: int | None) -> tuple[int, int]:
    """(units, days): the fewest units (or, given units, days) whose capacity reaches `rows`."""
    if rows < 1:
        raise ValueError(f"rows must be >= 1, got {rows}")
    if units is None:
        days = DEFAULT_DAYS if days is None else days
        units = _smallest(lambda u: capacity(u, days) >= rows, rows)
    elif days is None:
        days = _smallest(lambda d: capacity(units, d) >= rows, rows)
    elif capacity(units, days) < rows:
        raise ValueError(f"{units} units over {days} days give at most {capacity(units, days)} rows < {rows}")
    if units < 1 or days < 1:
        raise ValueError(f"units and days must be >= 1, got units={units} days={days}")
    return units, days


def _chunk(truth: pd.DataFrame, unit: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Prices and quantities for one day's `unit` rows: promotions, hikes and jitter around the current price."""
    n = len(unit)
    draw = rng.random(n)
    jitter = np.exp(rng.normal(0.0, 0.02, n))
    promotion = rng.uniform(0.6, 0.95, n)
    hike = rng.uniform(1.05, 1.3, n)
    multiple = np.where(draw < 0.35, promotion, np.where(draw < 0.50, hike, jitter))
    current = truth["current_price"].to_numpy()[unit]
    constant = truth["kind"].to_numpy()[unit] == "constant_price"
    price = np.where(constant, current, np.maximum(np.round(current * multiple, 2), 0.01))
    demand = (
        truth["base_demand"].to_numpy()[unit]
        * (price / current) ** truth["true_elasticity"].to_numpy()[unit]
        * np.exp(rng.normal(0.0, 0.08, n))
    )
    return {
        "price": price,
        "quantity": rng.poisson(demand).astype(np.float64),
        "unit_cost": truth["unit_cost"].to_numpy()[unit],
        "current_price": current,
    }


def _spoil(
    codes: dict[str, np.ndarray],
    values: dict[str, np.ndarray],
    bad_before: int,
    n_bad: int,
    kinds: tuple[str, ...],
    rng: np.random.Generator,
) -> tuple[dict[str, np.ndarray], dict[str, list[int]], dict[str, int]]:
    """Turn `n_bad` rows into bad rows, kinds in turn from global bad-row number `bad_before`.

    Returns per-column null masks for the keys, positions of non-numeric values per column, and
    the count per kind. `codes` and `values` are modified in place.
    """
    n = len(values["price"])
    n_bad = min(n_bad, n // 2)  # each duplicate needs a clean source row
    chosen = rng.choice(n, size=2 * n_bad, replace=False)
    bad, sources = chosen[:n_bad], chosen[n_bad:]
    null_masks = {key: np.zeros(n, dtype=bool) for key in KEY_COLUMNS}
    non_numeric: dict[str, list[int]] = {"price": [], "quantity": []}
    counts = dict.fromkeys(kinds, 0)
    for i, (row, source) in enumerate(zip(bad, sources)):
        kind = kinds[(bad_before + i) % len(kinds)]
        counts[kind] += 1
        if kind == "null_key":
            null_masks[KEY_COLUMNS[rng.integers(len(KEY_COLUMNS))]][row] = True
        elif kind == "bad_price":
            values["price"][row] = 0.0 if rng.random() < 0.5 else -values["price"][row]
        elif kind == "nan_quantity":
            values["quantity"][row] = np.nan
        elif kind == "duplicate":
            for column in (*codes.values(), *values.values()):
                column[row] = column[source]
        else:
            non_numeric["price" if rng.random() < 0.5 else "quantity"].append(int(row))
    return null_masks, non_numeric, counts


def _table(
    codes: dict[str, np.ndarray],
    names: dict[str, pa.Array],
    null_masks: dict[str, np.ndarray],
    date: dt.date,
    values: dict[str, np.ndarray],
    non_numeric: dict[str, list[int]],
) -> pa.Table:
    columns: dict[str, pa.Array] = {}
    for key in KEY_COLUMNS:
        columns[key] = names[key].take(pa.array(codes[key], mask=null_masks[key]))
    columns["date"] = pa.array(np.full(len(values["price"]), date, dtype="datetime64[D]"), type=pa.date32())
    for column in NUMERIC_COLUMNS:
        array = pa.array(values[column], type=pa.float64())
        rows = non_numeric.get(column)
        if rows:
            mask = np.zeros(len(array), dtype=bool)
            mask[rows] = True
            array = pc.if_else(pa.array(mask), pa.scalar("n/a"), pc.cast(array, pa.string()))
        columns[column] = array
    return pa.table(columns)


def generate(
    out_dir: str | Path,
    rows: int,
    units: int | None = None,
    start_date: str | dt.date = "2026-01-05",
    days: int | None = None,
    seed: int = 0,
    fmt: str = "parquet",
    bad_row_fraction: float = 0.001,
    overwrite: bool = False,
    storage_options: dict | None = None,
) -> dict:
    """Write exactly `rows` rows under `out_dir` (a local folder or s3://), partitioned by date; return statistics.

    `units` and `days` default to `DEFAULT_DAYS` days and as many units as `rows` needs; given
    `units` alone, the days follow from `rows`. Rows fill day by day, so the last day may lack
    some units. An `out_dir` that already holds `date=` partitions is refused unless `overwrite`,
    which deletes those partitions first.
    """
    started = time.perf_counter()
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")
    if not 0 <= bad_row_fraction <= 0.1:
        raise ValueError(f"bad_row_fraction must be in [0, 0.1], got {bad_row_fraction}")
    units, days = plan(rows, units, days)
    start = dt.date.fromisoformat(start_date) if isinstance(start_date, str) else start_date
    from batch_worker.storage import Location

    out = Location.parse(str(out_dir), storage_options)
    existing = sorted(out.fs.glob(out.join("date=*"))) if out.fs.exists(out.uri) else []
    if existing and not overwrite:
        raise FileExistsError(f"{out.uri} already holds {len(existing)} date partitions; pass overwrite=True")
    for partition in existing:
        out.fs.rm(partition, recursive=True)

    truth = unit_table(units, seed)
    key_codes = dict(zip(KEY_COLUMNS, _key_codes(units)))
    key_names = {key: pa.array(names, type=pa.string()) for key, names in zip(KEY_COLUMNS, _key_names(units))}
    sparse = (truth["kind"] == "sparse").to_numpy()
    kinds = CSV_BAD_KINDS if fmt == "csv" else BAD_KINDS
    bad_counts = dict.fromkeys(kinds, 0)
    files: list[str] = []
    written = bytes_written = days_written = 0

    for day in range(days):
        if written == rows:
            break
        present = np.flatnonzero(~sparse | _sparse_day(day, days))[: rows - written]
        date = start + dt.timedelta(days=day)
        days_written += 1
        for part, first in enumerate(range(0, len(present), ROWS_PER_FILE)):
            unit = present[first : first + ROWS_PER_FILE]
            rng = np.random.default_rng([seed, 1, day, part])
            values = _chunk(truth, unit, rng)
            codes = {key: key_codes[key][unit] for key in KEY_COLUMNS}
            bad_before = int(written * bad_row_fraction)
            n_bad = int((written + len(unit)) * bad_row_fraction) - bad_before
            null_masks, non_numeric, counts = _spoil(codes, values, bad_before, n_bad, kinds, rng)
            for kind, count in counts.items():
                bad_counts[kind] += count
            table = _table(codes, key_names, null_masks, date, values, non_numeric)
            relative = f"date={date.isoformat()}/part-{part}.{fmt}"
            buffer = pa.BufferOutputStream()
            if fmt == "parquet":
                pq.write_table(table, buffer)
            else:
                pa_csv.write_csv(table, buffer)
            data = buffer.getvalue().to_pybytes()
            out.write_bytes(out.join(f"date={date.isoformat()}", f"part-{part}.{fmt}"), data)
            files.append(relative)
            bytes_written += len(data)
            written += len(unit)

    segments, locations, products = key_layout(units)
    return {
        "rows": written,
        "units": units,
        "days": days_written,
        "segments": segments,
        "locations": locations,
        "products": products,
        "start_date": start.isoformat(),
        "end_date": (start + dt.timedelta(days=days_written - 1)).isoformat(),
        "format": fmt,
        "seed": seed,
        "bad_rows": bad_counts,
        "files": files,
        "bytes": bytes_written,
        "seconds": round(time.perf_counter() - started, 3),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write synthetic pricing data, partitioned by date.")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--rows", type=int, required=True)
    parser.add_argument("--units", type=int)
    parser.add_argument("--days", type=int)
    parser.add_argument("--start-date", default="2026-01-05")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--format", choices=FORMATS, default="parquet")
    parser.add_argument("--bad-row-fraction", type=float, default=0.001)
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    stats = generate(
        args.out,
        args.rows,
        units=args.units,
        start_date=args.start_date,
        days=args.days,
        seed=args.seed,
        fmt=args.format,
        bad_row_fraction=args.bad_row_fraction,
        overwrite=args.overwrite,
    )
    stats["files"] = len(stats["files"])
    print(json.dumps(stats, indent=2))


if __name__ == "__main__":
    main()


def ensure(root: str | Path, *, rows: int, units: int, start_date: str, seed: int = 0,
           storage_options: dict | None = None) -> str:
    """The dataset for these arguments under `root` (local or s3://), generated on first use (a `_COMPLETE` file
    marks it whole)."""
    from batch_worker.storage import Location

    out = Location.parse(f"{str(root).rstrip('/')}/rows{rows}-units{units}-from{start_date}-seed{seed}",
                         storage_options)
    if out.fs.exists(out.join("_COMPLETE")):
        return out.uri
    stats = generate(out.uri, rows=rows, units=units, start_date=start_date, seed=seed, overwrite=True,
                     storage_options=storage_options)
    out.write_bytes(out.join("_COMPLETE"), json.dumps(stats, default=str).encode())
    return out.uri
