"""The synthetic pricing data generator: determinism, date partitions, bad rows, unit kinds, CLI."""
from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from operators.pipelines.pricing import pricing_data
from operators.pipelines.pricing.pricing_data import SPARSE_DAYS, capacity, generate, plan, unit_table

COLUMNS = ["segment", "location", "product", "date", "price", "quantity", "unit_cost", "current_price"]


def read_parquet(directory) -> pd.DataFrame:
    return ds.dataset(directory, format="parquet").to_table().to_pandas()


def file_bytes(directory) -> dict[str, bytes]:
    return {str(path.relative_to(directory)): path.read_bytes() for path in sorted(directory.rglob("*.*"))}


@pytest.fixture(scope="module")
def parquet_data(tmp_path_factory):
    directory = tmp_path_factory.mktemp("parquet")
    stats = generate(directory, rows=12_000, seed=1, bad_row_fraction=0.01)
    return directory, stats, read_parquet(directory)


def test_same_seed_same_files_other_seed_other_files(tmp_path):
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        generate(tmp_path / name, rows=3000, units=40, seed=seed)
    first = file_bytes(tmp_path / "a")
    assert first == file_bytes(tmp_path / "b")
    other = file_bytes(tmp_path / "c")
    assert other.keys() == first.keys() and other != first


def test_exact_rows_and_stats(parquet_data):
    _, stats, frame = parquet_data
    assert stats["rows"] == len(frame) == 12_000
    assert stats["days"] == pricing_data.DEFAULT_DAYS
    assert (stats["start_date"], stats["end_date"]) == ("2026-01-05", "2026-03-29")
    assert stats["units"] == plan(12_000, None, None)[0]
    assert capacity(stats["units"], stats["days"]) >= 12_000 > capacity(stats["units"] - 1, stats["days"])
    assert list(frame.columns) == COLUMNS


def test_partitioned_by_date(parquet_data):
    directory, stats, _ = parquet_data
    assert len(stats["files"]) == stats["days"]
    expected_dates = [dt.date(2026, 1, 5) + dt.timedelta(days=i) for i in range(stats["days"])]
    assert stats["files"] == [f"date={d.isoformat()}/part-0.parquet" for d in expected_dates]
    for relative in stats["files"][:3] + stats["files"][-3:]:
        partition_date = re.match(r"date=(\S+)/", relative).group(1)
        dates = pq.read_table(directory / relative, columns=["date"]).column("date").unique().to_pylist()
        assert [d.isoformat() for d in dates] == [partition_date]
    window = duckdb.sql(
        f"select count(*), min(date), max(date) from read_parquet('{directory}/date=2026-02-0*/*.parquet', "
        "hive_partitioning=true)"
    ).fetchall()[0]
    assert window[1:] == (dt.date(2026, 2, 1), dt.date(2026, 2, 9)) and window[0] > 0


def test_bad_rows_present_and_counted(parquet_data):
    _, stats, frame = parquet_data
    bad = stats["bad_rows"]
    assert sum(bad.values()) == int(12_000 * 0.01)
    assert min(bad.values()) >= 25
    assert frame[["segment", "location", "product"]].isna().any(axis=1).sum() == bad["null_key"]
    assert (frame["price"] <= 0).sum() == bad["bad_price"]
    assert frame["quantity"].isna().sum() == bad["nan_quantity"]
    assert frame.duplicated().sum() == bad["duplicate"]


def test_csv_has_non_numeric_values(tmp_path):
    stats = generate(tmp_path, rows=5000, seed=2, fmt="csv", bad_row_fraction=0.01)
    assert all(name.endswith("/part-0.csv") for name in stats["files"])
    as_text = pa_csv.ConvertOptions(column_types={name: pa.string() for name in COLUMNS})
    frame = pa.concat_tables(
        pa_csv.read_csv(tmp_path / name, convert_options=as_text) for name in stats["files"]
    ).to_pandas()
    assert len(frame) == 5000
    assert frame[["price", "quantity"]].eq("n/a").sum().sum() == stats["bad_rows"]["non_numeric"] == 10
    assert frame["quantity"].eq("nan").sum() == stats["bad_rows"]["nan_quantity"]


def test_unit_kinds_show_in_the_data(tmp_path):
    stats = generate(tmp_path, rows=20_000, days=60, seed=4, bad_row_fraction=0.0)
    truth = unit_table(stats["units"], seed=4)
    frame = read_parquet(tmp_path)
    per_unit = frame.groupby(["segment", "location", "product"]).agg(
        rows=("price", "size"), prices=("price", "nunique")
    ).join(truth.set_index(["segment", "location", "product"]))
    assert set(per_unit["kind"]) == {"regular", "inelastic", "constant_price", "sparse", "cost_above_price"}
    assert (per_unit.loc[per_unit["kind"] == "sparse", "rows"] == SPARSE_DAYS).all()
    assert (per_unit.loc[per_unit["kind"] == "constant_price", "prices"] == 1).all()
    regular = per_unit[per_unit["kind"] == "regular"]
    assert regular["true_elasticity"].between(-3.5, -1.1).all() and (regular["prices"] > 10).all()
    assert truth.loc[truth["kind"] == "inelastic", "true_elasticity"].between(-0.9, -0.3).all()
    costly = truth["kind"] == "cost_above_price"
    assert (truth.loc[costly, "unit_cost"] > truth.loc[costly, "current_price"]).all()
    assert (truth.loc[~costly, "unit_cost"] < truth.loc[~costly, "current_price"]).all()
    assert np.isfinite(frame[["price", "quantity"]].to_numpy()).all() and (frame["quantity"] >= 0).all()


def test_units_given_sets_days_and_too_small_a_grid_is_refused():
    assert plan(1000, 10, None) == (10, 100)
    with pytest.raises(ValueError, match="at most"):
        plan(1000, 10, 20)


def test_existing_partitions_need_overwrite(tmp_path):
    generate(tmp_path, rows=500, units=10)
    with pytest.raises(FileExistsError):
        generate(tmp_path, rows=500, units=10)
    stats = generate(tmp_path, rows=100, units=10, overwrite=True)
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.parquet")) == stats["files"]


def test_cli_prints_stats(tmp_path, capsys):
    pricing_data.main(["--out", str(tmp_path), "--rows", "2000", "--format", "csv", "--seed", "3"])
    stats = json.loads(capsys.readouterr().out)
    assert stats["rows"] == 2000 and stats["format"] == "csv" and stats["files"] == stats["days"]


def test_ensure_writes_the_same_dataset_to_s3_once(tmp_path, local_aws):
    """A DATA_ROOT on S3 gets the same files as a local one; a second ensure finds it complete."""
    from operators.kit.storage import storage_options

    local_aws.s3.create_bucket(Bucket="pricing-datasets")
    options = storage_options("aws_default")
    arguments = dict(rows=3_000, units=300, start_date="2026-02-02", seed=4)
    uri = pricing_data.ensure("s3://pricing-datasets/root/datasets/pricing", storage_options=options, **arguments)
    local = pricing_data.ensure(str(tmp_path), **arguments)
    assert uri.startswith("s3://pricing-datasets/root/datasets/pricing/rows3000-")
    from batch_worker.storage import Location

    remote = Location.parse(uri, options)
    remote_files = sorted(p.removeprefix(uri.removeprefix("s3://")) for p in remote.fs.find(uri) if "date=" in p)
    local_files = sorted(str(p).removeprefix(local) for p in Path(local).rglob("*.parquet"))
    assert remote_files == local_files and remote_files
    for relative in remote_files:
        assert remote.read_bytes(uri + relative) == Path(local + relative).read_bytes()
    stats = json.loads(remote.read_bytes(uri + "/_COMPLETE"))
    assert stats["rows"] == 3_000
    remote.fs.rm(uri + remote_files[0])
    assert pricing_data.ensure("s3://pricing-datasets/root/datasets/pricing", storage_options=options,
                               **arguments) == uri  # complete: not generated again
    assert not remote.fs.exists(uri + remote_files[0])
