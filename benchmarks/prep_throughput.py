"""Prep throughput: `prepare` against the raw DuckDB partitioned COPY (the floor) and a pandas loop.

Generates a pricing-like table once (segment/location/product keys, date, price, quantity; about
rows/100 units over rows/units days; 0.1 % bad rows: null key, negative price, NaN quantity,
duplicate key), writes it as one Parquet file (or, with `--csv`, one CSV file), then times on it:

  prep          operators.kit.prep.prepare(...) into `--buckets` batches (validation, quarantine, manifest)
  duckdb_copy   COPY (SELECT *, <prep's bucket expression> AS bucket FROM input) TO dir
                (the CSV is read with DuckDB's own type detection)
                (FORMAT parquet, PARTITION_BY (bucket)): no checks, no manifest
  pandas        read_parquet, md5 bucket per unit, groupby(bucket) and one to_parquet per bucket:
                no checks, no manifest (with `--pandas-rows`, on a file of that many rows, its
                times scaled linearly to `--rows`)

With `--steps`, prep's own DuckDB statements are printed too, the costliest first, each with its CPU
and wall seconds (where prep's time goes: the bucket hash, the partitioned write, the checks).

Wall seconds are the figures compared; CPU seconds (all threads of this process) are printed too,
since they are steadier than wall time on a shared machine. Each method runs `--repeats` times;
the fastest run counts.

Usage (from the repo root): python benchmarks/prep_throughput.py [--rows N] [--buckets B] [--csv] [--steps]
"""
from __future__ import annotations

import argparse
import hashlib
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import duckdb  # noqa: E402
import pandas as pd  # noqa: E402
from batch_worker.schema import Column, InputSchema  # noqa: E402

from operators.kit.prep import BUCKET_COLUMN, bucketing_sql, duckdb_prepare, prepare  # noqa: E402

SCHEMA = InputSchema(
    columns=(
        Column("segment", "string"),
        Column("location", "string"),
        Column("product", "string"),
        Column("date", "date"),
        Column("price", "float", min=0.01),
        Column("quantity", "float", min=0),
    ),
    unit_key=("segment", "location", "product"),
    unique_key=("segment", "location", "product", "date"),
    time_column="date",
)
BAD_ROW_PERIOD = 1000  # each bad kind spoils one row in this many


def generate(path: Path, rows: int, csv: bool = False) -> None:
    """Write the synthetic table: row i is unit i % units on day i // units, some rows spoiled."""
    units = max(1, rows // 100)
    slot = f"((u + d * 37) % {BAD_ROW_PERIOD})"  # spread each bad kind over units and days
    with duckdb.connect() as con:
        con.execute(f"""
            COPY (
                SELECT CASE WHEN {slot} = 1 THEN NULL ELSE 'S' || (u % 20) END AS segment,
                       'L' || ((u // 20) % 100) AS location,
                       'P' || (u // 2000) AS product,
                       DATE '2025-01-01' + CAST(CASE WHEN {slot} = 4 AND d > 0 THEN d - 1 ELSE d END AS INTEGER)
                           AS date,
                       CASE WHEN {slot} = 2 THEN -1.0 ELSE 1 + ((i * 7919) % 10000) / 100.0 END AS price,
                       CASE WHEN {slot} = 3 THEN 'nan'::DOUBLE ELSE CAST((i * 104729) % 500 AS DOUBLE) END
                           AS quantity
                FROM (SELECT i, i % {units} AS u, i // {units} AS d FROM range({rows}) t(i))
            ) TO '{path}' ({"FORMAT csv, HEADER true" if csv else "FORMAT parquet"})""")


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def timed(run, out: Path) -> tuple[float, float]:
    """(wall, cpu) seconds of run(out), into a fresh directory that is removed afterwards."""
    shutil.rmtree(out, ignore_errors=True)
    wall, cpu = time.perf_counter(), cpu_seconds()
    run(out)
    wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
    shutil.rmtree(out, ignore_errors=True)
    return wall, cpu


class TimedConnection:
    """A DuckDB connection that records each statement's CPU and wall seconds (this process, all threads)."""

    def __init__(self, connection, steps: list[tuple[float, float, str]]):
        self._connection, self._steps = connection, steps

    def __getattr__(self, name):
        return getattr(self._connection, name)

    def execute(self, sql: str, *args, **kwargs):
        cpu, wall = cpu_seconds(), time.perf_counter()
        # A SELECT whose rows prep fetches afterwards (the duplicate-key hashes) counts only its start here.
        result = self._connection.execute(sql, *args, **kwargs)
        self._steps.append((cpu_seconds() - cpu, time.perf_counter() - wall, " ".join(sql.split())))
        return result

    def close(self) -> None:
        self._connection.close()


def run_prep(source: Path, buckets: int, steps: list | None = None):
    def run(out: Path) -> None:
        if steps is None:
            result = prepare(str(source), SCHEMA, str(out), buckets)
        else:
            steps.clear()
            connect = duckdb.connect  # the module prep imports is this one: patched, it must call the real one
            with mock.patch.object(duckdb_prepare.duckdb, "connect",
                                   lambda *a, **k: TimedConnection(connect(*a, **k), steps)):
                result = prepare(str(source), SCHEMA, str(out), buckets)
        run.summary = (f"prep: rows_in={result.rows_in} ok={result.rows_ok} quarantined={result.rows_quarantined} "
                       f"batches={result.batches} units={result.units}")
    return run


def run_duckdb_copy(source: Path, buckets: int):
    bucket = bucketing_sql(SCHEMA, buckets)
    reader = "read_csv" if source.suffix == ".csv" else "read_parquet"

    def run(out: Path) -> None:
        with duckdb.connect() as con:
            con.execute(f"COPY (SELECT *, {bucket} AS {BUCKET_COLUMN} FROM {reader}('{source}')) "
                        f"TO '{out}' (FORMAT parquet, PARTITION_BY ({BUCKET_COLUMN}))")
    return run


def run_pandas(source: Path, buckets: int):
    def bucket_of(key: str) -> int:
        return int(hashlib.md5(key.encode()).hexdigest()[:14], 16) % buckets

    def run(out: Path) -> None:
        frame = pd.read_csv(source) if source.suffix == ".csv" else pd.read_parquet(source)
        keys = frame["segment"].fillna("\x1e") + "\x1f" + frame["location"] + "\x1f" + frame["product"]
        codes, uniques = pd.factorize(keys)
        frame[BUCKET_COLUMN] = pd.Series([bucket_of(key) for key in uniques]).to_numpy()[codes]
        for bucket, group in frame.groupby(BUCKET_COLUMN, sort=False):
            directory = out / f"{BUCKET_COLUMN}={bucket}"
            directory.mkdir(parents=True)
            group.drop(columns=BUCKET_COLUMN).to_parquet(directory / "data_0.parquet", index=False)
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--buckets", type=int, default=3000)
    parser.add_argument("--pandas-rows", type=int, default=None,
                        help="run the pandas loop on this many rows and scale its time linearly (default: all)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--csv", action="store_true", help="write the input as one CSV file instead of Parquet")
    parser.add_argument("--steps", action="store_true", help="print prep's DuckDB statements by CPU seconds")
    args = parser.parse_args()
    pandas_rows = args.pandas_rows if args.pandas_rows and args.pandas_rows < args.rows else None
    pandas_scale = args.rows / pandas_rows if pandas_rows else 1.0

    with tempfile.TemporaryDirectory(prefix="prep-bench-") as tmp:
        work = Path(tmp)
        source = work / ("input.csv" if args.csv else "input.parquet")
        started = time.perf_counter()
        generate(source, args.rows, args.csv)
        print(f"generated {args.rows:,} rows ({source.stat().st_size / 1e6:.0f} MB {source.suffix[1:]}) "
              f"in {time.perf_counter() - started:.1f} s; {os.cpu_count()} CPUs, DuckDB {duckdb.__version__}")
        pandas_source = source
        if pandas_rows:
            pandas_source = work / f"pandas_sample{source.suffix}"
            with duckdb.connect() as con:
                con.execute(f"COPY (SELECT * FROM '{source}' LIMIT {pandas_rows}) "
                            f"TO '{pandas_source}' ({'FORMAT csv, HEADER true' if args.csv else 'FORMAT parquet'})")
        steps: list[tuple[float, float, str]] | None = [] if args.steps else None
        prep = run_prep(source, args.buckets, steps)
        methods = {
            "prep": prep,
            "duckdb_copy": run_duckdb_copy(source, args.buckets),
            "pandas": run_pandas(pandas_source, args.buckets),
        }
        best: dict[str, tuple[float, float]] = {}
        for _ in range(args.repeats):
            for name, run in methods.items():
                wall, cpu = timed(run, work / f"out_{name}")
                if name == "pandas":
                    wall, cpu = wall * pandas_scale, cpu * pandas_scale
                if name not in best or wall < best[name][0]:
                    best[name] = (wall, cpu)
        print(prep.summary)
        if steps:
            print("\nprep's statements (the last prep run), by CPU seconds:")
            for cpu, wall, sql in sorted(steps, reverse=True):
                if cpu >= 0.01:
                    print(f"  cpu {cpu:6.2f} s  wall {wall:6.2f} s  {sql[:110]}")

    rows_per_s = {name: args.rows / wall for name, (wall, _) in best.items()}
    print(f"\n{'method':<12} {'wall_s':>8} {'cpu_s':>8} {'rows/s':>12}")
    for name, (wall, cpu) in best.items():
        print(f"{name:<12} {wall:8.2f} {cpu:8.2f} {rows_per_s[name]:12,.0f}")
    if pandas_rows:
        print(f"pandas ran on {pandas_rows:,} of {args.rows:,} rows; its times are scaled x{pandas_scale:.1f} "
              "(linear extrapolation)")
    prep_s, copy_s, pandas_s = (best[name][0] for name in ("prep", "duckdb_copy", "pandas"))
    prep_cpu, copy_cpu = best["prep"][1], best["duckdb_copy"][1]
    pandas_note = f"pandas_extrapolated_from={pandas_rows} " if pandas_rows else ""
    print(f"prep_throughput format={'csv' if args.csv else 'parquet'} rows={args.rows} buckets={args.buckets} prep_s={prep_s:.2f} duckdb_copy_s={copy_s:.2f} "
          f"pandas_s={pandas_s:.2f} {pandas_note}prep_vs_copy={prep_s / copy_s:.2f}x "
          f"prep_vs_copy_cpu={prep_cpu / copy_cpu:.2f}x pandas_vs_prep={pandas_s / prep_s:.2f}x")


if __name__ == "__main__":
    main()
