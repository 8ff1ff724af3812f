"""Tests of operators.kit.prep: schema errors, quarantine, bucketing, manifest, window, inputs, s3 and Athena."""
from __future__ import annotations

import dataclasses
import datetime as dt
import glob
import hashlib
import json
import os
import shutil
import socket
from pathlib import Path

import boto3
import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from batch_worker.schema import Column, InputSchema

from operators.kit.prep import (
    ATHENA,
    DUCKDB,
    PrepError,
    SchemaError,
    SchemaSql,
    athena_ctas_sql,
    bucketing_sql,
    prepare,
    read_manifest,
    run_athena_prep,
)

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


# --- schema ------------------------------------------------------------------------------------------

def test_schema_error_names_every_missing_and_mistyped_column_and_writes_nothing(tmp_path):
    frame = sales().drop(columns=["product", "promo"])
    frame["date"] = 20260101  # an integer where a date belongs
    frame["quantity"] = frame["quantity"] > 5  # a boolean where a float belongs
    frame.to_parquet(tmp_path / "in.parquet")
    out = tmp_path / "out"
    with pytest.raises(SchemaError) as error:
        prepare(str(tmp_path / "in.parquet"), SCHEMA, str(out), 8)
    assert error.value.missing == ("product", "promo")
    assert error.value.mistyped == (("date", "date", "BIGINT"), ("quantity", "float", "BOOLEAN"))
    message = str(error.value)
    for text in ("'product'", "'promo'", "'date' (expected date, found BIGINT)",
                 "'quantity' (expected float, found BOOLEAN)"):
        assert text in message
    assert not out.exists()


def test_text_column_with_no_number_is_a_schema_error_but_some_garbage_is_not(tmp_path):
    frame = sales()
    frame["price"] = "cheap"
    frame.to_csv(tmp_path / "words.csv", index=False)
    with pytest.raises(SchemaError, match=r"'price' \(expected float, found VARCHAR with no parseable float value\)"):
        prepare(str(tmp_path / "words.csv"), SCHEMA, str(tmp_path / "out"), 8)
    frame.drop(columns="promo").assign(date="soon").to_csv(tmp_path / "worse.csv", index=False)
    with pytest.raises(SchemaError) as error:
        prepare(str(tmp_path / "worse.csv"), SCHEMA, str(tmp_path / "out"), 8)
    assert error.value.missing == ("promo",)
    assert [name for name, _, _ in error.value.mistyped] == ["date", "price"]
    assert not (tmp_path / "out").exists()

    frame = sales()
    frame["price"] = frame["price"].astype(object)
    frame.loc[3, "price"] = "cheap"
    frame.to_csv(tmp_path / "dirty.csv", index=False)
    result = prepare(str(tmp_path / "dirty.csv"), SCHEMA, str(tmp_path / "out"), 8)
    assert result.quarantined_by_reason == {"non_numeric:price": 1}


def test_bad_schema_keys_and_bucket_counts_are_refused_before_reading(tmp_path):
    for bucket_count in (0, -1, 10_001, 2.5, True):
        with pytest.raises(ValueError, match="bucket_count must be an integer in 1..10000"):
            prepare(str(tmp_path / "absent.parquet"), SCHEMA, str(tmp_path / "out"), bucket_count)
    bad_key = InputSchema(columns=SCHEMA.columns, unit_key=("segment", "sku"))
    with pytest.raises(ValueError, match=r"unit_key names column\(s\) \['sku'\]"):
        prepare(str(tmp_path / "absent.parquet"), bad_key, str(tmp_path / "out"), 8)
    with pytest.raises(FileNotFoundError, match="absent.parquet"):
        prepare(str(tmp_path / "absent.parquet"), SCHEMA, str(tmp_path / "out"), 8)
    assert not (tmp_path / "out").exists()


# --- quarantine --------------------------------------------------------------------------------------

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


def test_every_quarantine_reason_is_counted_and_the_bad_rows_are_kept_as_read(tmp_path):
    frame, expected = spoiled_csv(tmp_path / "in.csv")
    result = prepare(str(tmp_path / "in.csv"), SCHEMA, str(tmp_path / "out"), 8)

    assert result.quarantined_by_reason == dict(sorted(expected.items()))
    assert result.rows_in == len(frame)
    assert result.rows_quarantined == sum(expected.values())
    assert result.rows_in == result.rows_ok + result.rows_quarantined
    quarantine = pd.read_parquet(result.quarantine_uri)
    assert list(quarantine.columns) == [*frame.columns, "_prep_reason", "_prep_file", "_prep_line", "_prep_raw"]
    assert quarantine["_prep_reason"].value_counts().to_dict() == expected
    assert set(quarantine["_prep_file"]) == {str(tmp_path / "in.csv")}
    assert set(quarantine.loc[quarantine["_prep_reason"] == "non_numeric:price", "price"]) == {"n/a"}
    assert set(quarantine.loc[quarantine["_prep_reason"] == "non_date:date", "date"]) == {"yesterday"}
    good = batches(result)
    assert len(good) == result.rows_ok
    assert list(good.columns) == [*SCHEMA.names, "batch_id"]
    assert good["price"].dtype == "float64" and good["price"].min() >= 0.01
    assert good["quantity"].between(0, 1000).all() and not good["quantity"].isna().any()
    assert not good.duplicated(["segment", "product", "date"]).any()
    conflicting_key = tuple(frame.loc[150, ["segment", "product", "date"]])
    assert conflicting_key not in set(zip(good["segment"], good["product"], good["date"].astype(str)))


def test_identical_duplicates_keep_one_row_and_conflicting_ones_keep_none_whatever_the_input_order(tmp_path):
    frame = sales().assign(note="first")
    identical = frame.iloc[[5, 5]].assign(note=["second", "third"])  # an undeclared column may differ
    conflicting = frame.iloc[[7, 7]].assign(price=[0.5, 77.0])
    key = ["segment", "product", "date"]
    for seed in (1, 2):
        shuffled = pd.concat([frame, identical, conflicting]).sample(frac=1, random_state=seed)
        shuffled.to_parquet(tmp_path / f"in{seed}.parquet")
        result = prepare(str(tmp_path / f"in{seed}.parquet"), SCHEMA, str(tmp_path / f"out{seed}"), 8)
        assert result.quarantined_by_reason == {"conflicting_duplicate": 3, "duplicate": 2}
        assert (result.rows_in, result.rows_ok) == (len(shuffled), len(frame) - 1)
        good = batches(result).set_index(key)
        assert tuple(frame.loc[5, key]) in good.index and tuple(frame.loc[7, key]) not in good.index
        quarantined = pd.read_parquet(result.quarantine_uri)
        assert sorted(quarantined.loc[quarantined["_prep_reason"] == "duplicate", "note"]) == ["second", "third"]
        assert sorted(quarantined.loc[quarantined["_prep_reason"] == "conflicting_duplicate", "price"]) == sorted(
            [0.5, 77.0, frame.loc[7, "price"]])


def test_nan_in_parquet_is_quarantined_despite_statistics_without_nan(tmp_path):
    frame = sales()
    frame.loc[[3, 4], "quantity"] = np.nan  # writers leave NaN out of the min/max statistics
    frame.loc[5, "quantity"] = 5000.0
    table = pa.Table.from_pandas(frame, preserve_index=False)  # from_pandas turns NaN into NULL; put NaN back
    table = table.set_column(table.schema.get_field_index("quantity"), "quantity",
                             pa.array(frame["quantity"].to_numpy()))
    assert table["quantity"].null_count == 0
    pq.write_table(table, tmp_path / "in.parquet")
    result = prepare(str(tmp_path / "in.parquet"), SCHEMA, str(tmp_path / "out"), 8)
    assert result.quarantined_by_reason == {"null:quantity": 2, "out_of_range:quantity": 1}
    assert not batches(result)["quantity"].isna().any()


def test_only_bad_rows_give_no_batches_and_an_empty_manifest(tmp_path):
    frame = sales(units=3, days=2).assign(price=-1.0)
    frame.to_parquet(tmp_path / "in.parquet")
    result = prepare(str(tmp_path / "in.parquet"), SCHEMA, str(tmp_path / "out"), 8, max_quarantined_share=1)
    assert (result.rows_ok, result.batches, result.units) == (0, 0, 0)
    assert result.quarantined_by_reason == {"out_of_range:price": 6}
    assert read_manifest(result.manifest_uri).empty
    assert len(pd.read_parquet(result.quarantine_uri)) == 6


# --- buckets and manifest ----------------------------------------------------------------------------

def test_a_unit_lands_in_one_stable_bucket(tmp_path):
    sales().to_parquet(tmp_path / "in.parquet")
    first = prepare(str(tmp_path / "in.parquet"), SCHEMA, str(tmp_path / "one"), 16)
    second = prepare(f"file://{tmp_path}/in.parquet", SCHEMA, f"file://{tmp_path}/two", 16)
    assert first.quarantine_uri is None and first.quarantined_by_reason == {}

    one, two = batches(first), batches(second)
    assert (one.groupby(["segment", "product"])["batch_id"].nunique() == 1).all()
    unit_bucket = one.groupby(["segment", "product"])["batch_id"].first()
    assert unit_bucket.equals(two.groupby(["segment", "product"])["batch_id"].first())
    assert unit_bucket.to_dict() == {(s, p): expected_bucket(s, p, 16) for s, p in unit_bucket.index}
    assert first.units == 40 and first.batches == unit_bucket.nunique() > 1

    manifest = read_manifest(first.manifest_uri)
    assert list(manifest.columns) == ["batch_id", "uri", "rows", "units", "content_hash"]
    assert manifest["batch_id"].is_monotonic_increasing
    for batch in manifest.itertuples():
        rows = one[one["batch_id"] == batch.batch_id]
        assert batch.uri.startswith(str(tmp_path / "one")) and os.path.isfile(batch.uri)
        assert batch.rows == len(rows) and batch.units == len(rows.groupby(["segment", "product"]))
    assert sorted(glob.glob(str(tmp_path / "one" / "batches" / "*" / "*.parquet"))) == sorted(manifest["uri"])


def test_content_hashes_ignore_row_order_and_see_every_value(tmp_path):
    frame = sales()
    frame.to_parquet(tmp_path / "a.parquet")
    frame.sample(frac=1, random_state=9).to_parquet(tmp_path / "b.parquet", row_group_size=50)
    changed = frame.copy()
    changed.loc[0, "price"] += 0.01
    changed.to_parquet(tmp_path / "c.parquet")
    manifests = [read_manifest(prepare(str(tmp_path / f"{name}.parquet"), SCHEMA, str(tmp_path / name), 8).manifest_uri)
                 .set_index("batch_id")["content_hash"] for name in "abc"]

    assert manifests[0].equals(manifests[1])
    changed_batch = expected_bucket(frame.loc[0, "segment"], frame.loc[0, "product"], 8)
    differs = manifests[0] != manifests[2]
    assert differs[differs].index.tolist() == [changed_batch]


def test_a_rerun_replaces_the_earlier_outputs(tmp_path):
    frame, _ = spoiled_csv(tmp_path / "in.csv")
    out = tmp_path / "out"
    prepare(str(tmp_path / "in.csv"), SCHEMA, str(out), 64)
    sales().to_csv(tmp_path / "clean.csv", index=False)
    result = prepare(str(tmp_path / "clean.csv"), SCHEMA, str(out), 4)
    assert result.quarantine_uri is None and not (out / "quarantine.parquet").exists()
    assert len(os.listdir(out / "batches")) == result.batches <= 4
    assert len(batches(result)) == len(sales())


def written(out: Path) -> dict[str, int]:
    """Every file under `out` with its modification time in nanoseconds."""
    return {str(path): path.stat().st_mtime_ns for path in out.rglob("*") if path.is_file()}


def test_the_same_input_and_settings_prepared_again_into_the_same_place_reuse_the_earlier_output(tmp_path):
    frame, _ = spoiled_csv(tmp_path / "in.csv")
    out = tmp_path / "out"
    first = prepare(str(tmp_path / "in.csv"), SCHEMA, str(out), 8)
    before = written(out)
    again = prepare(str(tmp_path / "in.csv"), SCHEMA, str(out), 8)
    assert again == first
    assert written(out) == before  # nothing rewritten
    assert json.loads((out / "_PREPARED.json").read_text())["result"] == first.to_dict()


@pytest.mark.parametrize("change", ["input_content", "input_touched", "input_added", "settings", "window",
                                    "batch_missing", "marker_corrupt", "marker_missing"])
def test_a_prepare_is_reused_only_when_nothing_it_depends_on_changed(tmp_path, change):
    folder = tmp_path / "in"
    folder.mkdir()
    frame = sales()
    frame.iloc[:200].to_parquet(folder / "a.parquet")
    frame.iloc[200:].to_parquet(folder / "b.parquet")
    out = tmp_path / "out"
    args = dict(window=None)
    first = prepare(str(folder), SCHEMA, str(out), 8)
    bucket_count = 8
    if change == "input_content":
        frame.iloc[200:-1].to_parquet(folder / "b.parquet")
    elif change == "input_touched":
        stat = (folder / "a.parquet").stat()
        os.utime(folder / "a.parquet", ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    elif change == "input_added":
        sales(units=2, seed=1).assign(segment="S9").to_parquet(folder / "c.parquet")
    elif change == "settings":
        bucket_count = 4
    elif change == "window":
        args = dict(window=("2026-01-02", "2026-01-09"))
    elif change == "batch_missing":
        os.remove(read_manifest(first.manifest_uri)["uri"].iloc[-1])
    elif change == "marker_corrupt":
        (out / "_PREPARED.json").write_text("{not json")
    elif change == "marker_missing":
        (out / "_PREPARED.json").unlink()
    marker_before = (out / "_PREPARED.json").stat().st_mtime_ns if (out / "_PREPARED.json").exists() else None

    again = prepare(str(folder), SCHEMA, str(out), bucket_count, **args)

    assert (out / "_PREPARED.json").stat().st_mtime_ns != marker_before  # prepared again, marker rewritten
    expected = pd.concat([pd.read_parquet(path) for path in sorted(folder.glob("*.parquet"))], ignore_index=True)
    if args["window"]:
        expected = expected[(expected["date"] >= dt.date(2026, 1, 2)) & (expected["date"] < dt.date(2026, 1, 9))]
    assert again.rows_in == len(expected) == len(batches(again)) + again.rows_quarantined
    assert again.batches == len(read_manifest(again.manifest_uri))
    if change in ("input_touched", "batch_missing", "marker_corrupt", "marker_missing"):
        assert again == first  # same rows, same batches: only the reuse was refused


def test_another_runs_prepare_of_the_same_input_is_copied_into_this_runs_folder(tmp_path):
    spoiled_csv(tmp_path / "in.csv")
    root = tmp_path / "root"
    first = prepare(str(tmp_path / "in.csv"), SCHEMA, str(root / "runs" / "a" / "prep"), 8, reuse_root=str(root))
    assert len(list((root / "prep-index").glob("*.json"))) == 1
    second = prepare(str(tmp_path / "in.csv"), SCHEMA, str(root / "runs" / "b" / "prep"), 8, reuse_root=str(root))

    out = root / "runs" / "b" / "prep"
    assert second == dataclasses.replace(first, out_uri=str(out), manifest_uri=str(out / "manifest.parquet"),
                                         quarantine_uri=str(out / "quarantine.parquet"))
    manifest = read_manifest(second.manifest_uri)
    assert manifest["uri"].str.startswith(str(out / "batches") + "/").all()
    assert manifest.drop(columns="uri").equals(read_manifest(first.manifest_uri).drop(columns="uri"))
    assert batches(second).drop(columns="batch_id").sort_values(list(SCHEMA.names)).reset_index(drop=True).equals(
        batches(first).drop(columns="batch_id").sort_values(list(SCHEMA.names)).reset_index(drop=True))
    assert pd.read_parquet(second.quarantine_uri).equals(pd.read_parquet(first.quarantine_uri))
    shutil.rmtree(root / "runs" / "a")  # the copy is this run's own
    assert len(batches(second)) == second.rows_ok
    again = prepare(str(tmp_path / "in.csv"), SCHEMA, str(root / "runs" / "b" / "prep"), 8, reuse_root=str(root))
    assert again == second


@pytest.mark.parametrize("entry", ['{"out": "../elsewhere/prep"}', '{"out": "/abs/prep"}', "not json",
                                   '{"out": "runs/gone/prep"}'])
def test_a_prep_index_entry_leading_outside_the_root_or_to_nothing_is_not_used(tmp_path, entry):
    spoiled_csv(tmp_path / "in.csv")
    root = tmp_path / "root"
    elsewhere = tmp_path / "elsewhere" / "prep"
    prepare(str(tmp_path / "in.csv"), SCHEMA, str(elsewhere), 8)  # a real prepare outside the root
    first = prepare(str(tmp_path / "in.csv"), SCHEMA, str(root / "runs" / "a" / "prep"), 8, reuse_root=str(root))
    [index] = (root / "prep-index").glob("*.json")
    index.write_text(entry)
    marker = root / "runs" / "b" / "prep" / "_PREPARED.json"
    second = prepare(str(tmp_path / "in.csv"), SCHEMA, str(root / "runs" / "b" / "prep"), 8, reuse_root=str(root))
    assert second.rows_ok == first.rows_ok and marker.exists()
    assert read_manifest(second.manifest_uri)["uri"].str.startswith(str(root / "runs" / "b" / "prep")).all()
    assert json.loads(index.read_text()) == {"out": "runs/b/prep"}  # computed here, and indexed here


def test_an_earlier_prepare_that_vanishes_while_it_is_copied_is_prepared_again(tmp_path, monkeypatch):
    from operators.kit.prep import reuse

    spoiled_csv(tmp_path / "in.csv")
    root = tmp_path / "root"
    first = prepare(str(tmp_path / "in.csv"), SCHEMA, str(root / "runs" / "a" / "prep"), 8, reuse_root=str(root))
    copies = []

    def removed_midway(out, source, target):
        if copies:
            raise FileNotFoundError(source)  # the earlier run's folder was cleared after the first file
        copies.append(source)
        shutil.copyfile(source, target)

    monkeypatch.setattr(reuse, "_copy_file", removed_midway)  # where _PrepIndex looks it up
    second = prepare(str(tmp_path / "in.csv"), SCHEMA, str(root / "runs" / "b" / "prep"), 8, reuse_root=str(root))
    assert copies and second.rows_ok == first.rows_ok and second.batches == first.batches
    assert read_manifest(second.manifest_uri)["uri"].str.startswith(str(root / "runs" / "b")).all()
    assert len(batches(second)) == second.rows_ok


def test_a_failed_prepare_leaves_nothing_a_later_one_could_reuse(tmp_path):
    out = tmp_path / "out"
    sales().to_csv(tmp_path / "in.csv", index=False)
    prepare(str(tmp_path / "in.csv"), SCHEMA, str(out), 8)
    assert (out / "_PREPARED.json").exists()
    bad = sales()
    bad["price"] = -1.0  # every row out of range
    bad.to_csv(tmp_path / "in.csv", index=False)
    with pytest.raises(PrepError):
        prepare(str(tmp_path / "in.csv"), SCHEMA, str(out), 8)
    assert not (out / "_PREPARED.json").exists() and not (out / "manifest.parquet").exists()


def test_to_dict_is_small_and_json_serialisable(tmp_path):
    spoiled_csv(tmp_path / "in.csv")
    result = prepare(str(tmp_path / "in.csv"), SCHEMA, str(tmp_path / "out"), 8)
    assert json.loads(json.dumps(result.to_dict())) == result.to_dict()
    assert result.to_dict()["quarantined_by_reason"]["duplicate"] == 2


# --- window ------------------------------------------------------------------------------------------

def test_window_keeps_start_drops_end_and_keeps_rows_without_a_date(tmp_path):
    frame = sales()
    frame["date"] = frame["date"].astype(str)
    frame.loc[0, "date"] = None
    frame.loc[1, "date"] = "someday"
    frame.to_csv(tmp_path / "in.csv", index=False)
    result = prepare(str(tmp_path / "in.csv"), SCHEMA, str(tmp_path / "out"), 8, window=("2026-01-03", "2026-01-05"))

    in_window = frame["date"].isin(["2026-01-03", "2026-01-04"])
    assert result.rows_in == in_window.sum() + 2
    assert result.quarantined_by_reason == {"non_date:date": 1, "null:date": 1}
    good = batches(result)
    assert set(good["date"]) == {dt.date(2026, 1, 3), dt.date(2026, 1, 4)}
    assert len(good) == in_window.sum()

    aware = prepare(str(tmp_path / "in.csv"), SCHEMA, str(tmp_path / "aware"), 8,
                    window=("2026-01-03T00:00:00+00:00", "2026-01-05T00:00:00+00:00"))
    assert (aware.rows_in, aware.rows_ok) == (result.rows_in, result.rows_ok)
    with pytest.raises(ValueError, match="is not before its end"):
        prepare(str(tmp_path / "in.csv"), SCHEMA, str(tmp_path / "x"), 8, window=("2026-01-05", "2026-01-03"))


# --- input forms -------------------------------------------------------------------------------------

def test_csv_gzip_parquet_hive_and_glob_inputs_give_identical_batches(tmp_path):
    frame = sales()
    frame.to_csv(tmp_path / "in.csv", index=False)
    frame.to_csv(tmp_path / "in.csv.gz", index=False, compression="gzip")
    frame.to_parquet(tmp_path / "in.parquet")
    for day, rows in frame.groupby("date"):
        directory = tmp_path / "hive" / f"date={day.isoformat()}"
        directory.mkdir(parents=True)
        rows.drop(columns="date").to_parquet(directory / "part-0.parquet")
    (tmp_path / "hive" / "_SUCCESS").touch()
    for i in range(3):
        frame.iloc[i::3].to_parquet(tmp_path / f"part-{i}.parquet")

    inputs = ["in.csv", "in.csv.gz", "in.parquet", "hive", "part-*.parquet"]
    manifests = []
    for i, name in enumerate(inputs):
        result = prepare(str(tmp_path / name), SCHEMA, str(tmp_path / f"out{i}"), 8)
        assert (result.rows_in, result.rows_ok) == (len(frame), len(frame)), name
        manifests.append(read_manifest(result.manifest_uri).drop(columns="uri"))
    for name, manifest in zip(inputs[1:], manifests[1:]):
        pd.testing.assert_frame_equal(manifest, manifests[0], obj=name)


def test_hive_partition_values_keep_their_text_for_string_columns(tmp_path):
    frame = sales().assign(product=lambda f: f["product"].str.replace("P", "1"))  # "1007": text that looks numeric
    for product, rows in frame.groupby("product"):
        directory = tmp_path / "hive" / f"product={product}"
        directory.mkdir(parents=True)
        rows.drop(columns="product").to_parquet(directory / "part-0.parquet")
    result = prepare(str(tmp_path / "hive"), SCHEMA, str(tmp_path / "out"), 8)
    assert result.rows_ok == len(frame)
    assert set(batches(result)["product"]) == set(frame["product"])


def test_a_nullable_unit_key_column_buckets_null_apart_from_empty_text(tmp_path):
    schema = InputSchema(columns=SCHEMA.columns, unit_key=("segment", "promo"))
    frame = sales()
    frame.loc[frame["promo"].isna() & (frame.index % 2 == 0), "promo"] = ""
    frame.to_parquet(tmp_path / "in.parquet")
    result = prepare(str(tmp_path / "in.parquet"), schema, str(tmp_path / "out"), 97)
    good = batches(result)
    assert len(good) == len(frame) and result.units == 9  # 3 segments x {"yes", "", NULL}
    for (segment, promo), rows in good.groupby(["segment", "promo"], dropna=False):
        text = "\x1e" if pd.isna(promo) else promo  # the NULL marker
        key = hashlib.md5(f"{segment}\x1f{text}".encode()).hexdigest()
        assert set(rows["batch_id"]) == {int(key[:14], 16) % 97}


def test_mixed_formats_are_refused(tmp_path):
    sales().to_csv(tmp_path / "a.csv", index=False)
    sales().to_parquet(tmp_path / "b.parquet")
    with pytest.raises(ValueError, match=r"mixes formats \['csv', 'parquet'\]"):
        prepare(str(tmp_path), SCHEMA, str(tmp_path / "out"), 8)


# --- SQL shared with Athena --------------------------------------------------------------------------

def test_athena_ctas_uses_the_same_checks_window_and_bucket_as_duckdb():
    window = ("2026-01-01", "2026-02-01")
    sql = athena_ctas_sql("sales.raw", SCHEMA, "sales.prepped", "s3://lake/prepped/run1/", 3000, window)
    text_columns = [c.name for c in SCHEMA.columns if c.dtype != "string"]
    athena, duck = SchemaSql(SCHEMA, ATHENA, text_columns), SchemaSql(SCHEMA, DUCKDB, text_columns)

    assert sql.startswith("CREATE TABLE sales.prepped\nWITH (format = 'PARQUET', "
                          "external_location = 's3://lake/prepped/run1/', "
                          "bucketed_by = ARRAY['bucket'], bucket_count = 3000)")
    assert f"{bucketing_sql(SCHEMA, 3000, 'athena', text_columns)} AS bucket" in sql
    assert [reason for reason, _ in athena.checks()] == [reason for reason, _ in duck.checks()]
    assert f"WHERE {athena.valid()}\n  AND {athena.in_scope(window)}" in sql
    assert "DATE '2026-01-01'" in sql and "DATE '2026-02-01'" in sql
    unique = ", ".join(SchemaSql(SCHEMA, ATHENA).value(name) for name in SCHEMA.unique_key)
    assert f"PARTITION BY {unique}" in sql and "_prep_rank = 1 AND NOT _prep_conflict" in sql
    # The two dialects differ only in how functions are spelled, not in what is checked.
    from operators.kit.prep.sql import _BLANKS as blanks

    duck_in_athena_spelling = duck.valid()
    for old, new in (("TRY_CAST", "try_cast"), ("isnan", "is_nan"), ("isinf", "is_infinite"), ("DOUBLE", "double"),
                     ("regexp_matches", "regexp_like"),
                     ("DATE)", "date)"), *((DUCKDB.trim.format(expr=f'"{n}"', chars=blanks),
                                            ATHENA.trim.format(expr=f'"{n}"', chars=blanks)) for n in SCHEMA.names)):
        duck_in_athena_spelling = duck_in_athena_spelling.replace(old, new)
    assert duck_in_athena_spelling == athena.valid()
    with pytest.raises(ValueError, match="bucket_count"):
        athena_ctas_sql("sales.raw", SCHEMA, "sales.prepped", "s3://lake/x/", 10_001)
    with pytest.raises(ValueError, match="not a \\[database.\\]table name"):
        athena_ctas_sql("raw; DROP TABLE x", SCHEMA, "sales.prepped", "s3://lake/x/", 8)


def test_duckdb_bucket_expression_matches_the_documented_algorithm():
    keys = pd.DataFrame({"segment": ["S0", "S1", "é", "S2"], "product": ["P1", "P1", "P☃", ""]})
    with duckdb.connect() as con:
        con.register("keys", keys)
        buckets = con.execute(f"SELECT {bucketing_sql(SCHEMA, 977)} FROM keys").fetchall()
    assert [b for (b,) in buckets] == [expected_bucket(s, p, 977) for s, p in zip(keys["segment"], keys["product"])]


# --- s3 and Athena against a local moto server -------------------------------------------------------

@pytest.fixture(scope="module")
def moto_endpoint():
    """A moto server on a free loopback port, with credentials and the Airflow AWS connection pointing at it."""
    from moto.server import ThreadedMotoServer

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    url = f"http://127.0.0.1:{port}"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("AWS_ACCESS_KEY_ID", "testing")
        env.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        env.setenv("AWS_DEFAULT_REGION", "us-east-1")
        env.setenv("AIRFLOW_CONN_AWS_DEFAULT", json.dumps({
            "conn_type": "aws", "login": "testing", "password": "testing",
            "extra": {"region_name": "us-east-1", "endpoint_url": url}}))
        yield url
    server.stop()


def test_prepare_reads_and_writes_s3(moto_endpoint, tmp_path):
    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    s3.create_bucket(Bucket="prep-test")
    frame, expected = spoiled_csv(tmp_path / "in.csv")
    clean = sales()
    clean.to_parquet(tmp_path / "in.parquet")
    s3.upload_file(str(tmp_path / "in.csv"), "prep-test", "raw/csv/in.csv")
    s3.upload_file(str(tmp_path / "in.parquet"), "prep-test", "raw/parquet/2026/in.parquet")
    options = {"key": "testing", "secret": "testing", "endpoint_url": moto_endpoint,
               "client_kwargs": {"region_name": "us-east-1"}}

    from_csv = prepare("s3://prep-test/raw/csv/", SCHEMA, "s3://prep-test/prepped/csv", 8, storage_options=options)
    from_parquet = prepare("s3://prep-test/raw/parquet/**/*.parquet", SCHEMA, "s3://prep-test/prepped/parquet", 8,
                           storage_options=options)

    assert from_csv.quarantined_by_reason == dict(sorted(expected.items()))
    assert from_csv.quarantine_uri == "s3://prep-test/prepped/csv/quarantine.parquet"
    assert from_parquet.rows_ok == len(clean) and from_parquet.quarantine_uri is None
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket="prep-test", Prefix="prepped/")["Contents"]}
    for result in (from_csv, from_parquet):
        manifest = read_manifest(result.manifest_uri, storage_options=options)
        assert len(manifest) == result.batches and manifest["rows"].sum() == result.rows_ok
        assert all(uri.removeprefix("s3://prep-test/") in keys for uri in manifest["uri"])
        assert manifest["uri"].str.startswith(result.out_uri + "/batches/bucket=").all()
    s3.download_file("prep-test", "prepped/csv/quarantine.parquet", str(tmp_path / "q.parquet"))
    assert len(pd.read_parquet(tmp_path / "q.parquet")) == from_csv.rows_quarantined
    s3.download_file("prep-test", read_manifest(from_parquet.manifest_uri, options)["uri"][0]
                     .removeprefix("s3://prep-test/"), str(tmp_path / "batch.parquet"))
    assert list(pd.read_parquet(tmp_path / "batch.parquet").columns) == list(SCHEMA.names)

    def objects() -> dict[str, str]:
        return {o["Key"]: o["ETag"] + str(o["LastModified"])
                for o in s3.list_objects_v2(Bucket="prep-test", Prefix="prepped/parquet/")["Contents"]}
    before = objects()
    again = prepare("s3://prep-test/raw/parquet/**/*.parquet", SCHEMA, "s3://prep-test/prepped/parquet", 8,
                    storage_options=options)
    assert again == from_parquet and objects() == before  # unchanged input: the earlier output is reused
    s3.upload_file(str(tmp_path / "in.parquet"), "prep-test", "raw/parquet/2026/more.parquet")
    doubled = prepare("s3://prep-test/raw/parquet/**/*.parquet", SCHEMA, "s3://prep-test/prepped/parquet", 8,
                      storage_options=options, max_quarantined_share=0.5)
    assert doubled.rows_in == 2 * len(clean) and doubled.quarantined_by_reason == {"duplicate": len(clean)}


def test_an_unclosed_quote_in_a_gzipped_csv_on_s3_is_one_quarantined_line(moto_endpoint, tmp_path):
    import gzip

    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    s3.create_bucket(Bucket="prep-quote")
    lines = good_lines(400)
    lines[100] = lines[100].replace(",yes", ',"yes')
    s3.put_object(Bucket="prep-quote", Key="raw/in.csv", Body=gzip.compress((CSV_HEADER + "".join(lines)).encode()))
    options = {"key": "testing", "secret": "testing", "endpoint_url": moto_endpoint,
               "client_kwargs": {"region_name": "us-east-1"}}
    result = prepare("s3://prep-quote/raw/in.csv", SCHEMA, "s3://prep-quote/prepped", 8, storage_options=options)
    assert (result.rows_in, result.rows_ok) == (400, 399)
    assert result.quarantined_by_reason == {"malformed:unclosed_quote": 1}
    s3.download_file("prep-quote", "prepped/quarantine.parquet", str(tmp_path / "q.parquet"))
    quarantine = pd.read_parquet(tmp_path / "q.parquet")
    assert list(quarantine["_prep_line"]) == [102] and list(quarantine["_prep_file"]) == ["s3://prep-quote/raw/in.csv"]


def test_another_runs_prepare_on_s3_is_copied_server_side_into_this_runs_folder(moto_endpoint, tmp_path):
    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    s3.create_bucket(Bucket="prep-reuse")
    spoiled_csv(tmp_path / "in.csv")
    s3.upload_file(str(tmp_path / "in.csv"), "prep-reuse", "raw/in.csv")
    options = {"key": "testing", "secret": "testing", "endpoint_url": moto_endpoint,
               "client_kwargs": {"region_name": "us-east-1"}}
    root = "s3://prep-reuse/root"
    first = prepare("s3://prep-reuse/raw/", SCHEMA, f"{root}/runs/a/prep", 8, storage_options=options,
                    reuse_root=root)
    second = prepare("s3://prep-reuse/raw/", SCHEMA, f"{root}/runs/b/prep", 8, storage_options=options,
                     reuse_root=root)
    out = f"{root}/runs/b/prep"
    assert second == dataclasses.replace(first, out_uri=out, manifest_uri=f"{out}/manifest.parquet",
                                         quarantine_uri=f"{out}/quarantine.parquet")
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket="prep-reuse", Prefix="root/runs/b/")["Contents"]}
    manifest = read_manifest(second.manifest_uri, storage_options=options)
    assert all(uri.removeprefix("s3://prep-reuse/") in keys for uri in manifest["uri"])
    assert manifest["uri"].str.startswith(f"{out}/batches/").all()
    assert {"root/runs/b/prep/quarantine.parquet", "root/runs/b/prep/_PREPARED.json"} <= keys


def test_run_athena_prep_submits_the_generated_ctas(moto_endpoint):
    window = ("2026-01-01", "2026-01-08")
    execution_id = run_athena_prep("sales.raw", SCHEMA, "sales.prepped", "s3://lake/prepped/", 64,
                                   database="sales", output_location="s3://lake/athena-results/",
                                   window=window, poll_seconds=1)
    athena = boto3.client("athena", endpoint_url=moto_endpoint, region_name="us-east-1")
    execution = athena.get_query_execution(QueryExecutionId=execution_id)["QueryExecution"]
    assert execution["Query"] == athena_ctas_sql("sales.raw", SCHEMA, "sales.prepped", "s3://lake/prepped/", 64, window)
    assert execution["QueryExecutionContext"]["Database"] == "sales"
    assert execution["ResultConfiguration"]["OutputLocation"].startswith("s3://lake/athena-results/")
    assert execution["Status"]["State"] == "SUCCEEDED"


def athena_result(header: list[str], rows: list[list[str]]) -> dict:
    return {"rows": [{"Data": [{"VarCharValue": v} for v in values]} for values in [header, *rows]],
            "column_info": [{"Name": h, "Type": "varchar"} for h in header]}


def test_prepare_configured_runs_the_athena_path_for_an_athena_table(moto_endpoint):
    """The Athena path's API calls against the endpoint: CTAS, quarantine counts, manifest query, manifest file.

    moto runs no SQL, so the query results Athena would return are queued through moto's API.
    """
    import requests

    from operators.kit.prep import athena_manifest_sql, athena_quarantine_sql, prepare_configured

    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    s3.create_bucket(Bucket="lake")
    files = [["s3://lake/prep/run1/batches/q_bucket-00003", "3", "120", "7", "a1"],
             ["s3://lake/prep/run1/batches/q_bucket-00005", "5", "80", "4", "b2"]]
    requests.post(f"{moto_endpoint}/moto-api/static/athena/query-results", json={"results": [
        athena_result(["rows"], []),  # the CTAS
        athena_result(["reason", "n"], [["null:segment", "3"], ["out_of_range:price", "2"]]),
        athena_result(["uri", "bucket", "rows", "units", "content_hash"], files),
    ]}).raise_for_status()
    options = {"key": "testing", "secret": "testing", "endpoint_url": moto_endpoint,
               "client_kwargs": {"region_name": "us-east-1"}}
    window = ("2026-01-01", "2026-01-08")
    result = prepare_configured("athena://sales.raw", SCHEMA, "s3://lake/prep/run1", 64, window=window,
                                storage_options=options,
                                env={"ATHENA_OUTPUT_LOCATION": "s3://lake/athena-results/", "ATHENA_POLL_SECONDS": "1"})
    assert (result.rows_ok, result.rows_quarantined, result.units, result.batches) == (200, 5, 11, 2)
    assert result.quarantined_by_reason == {"null:segment": 3, "out_of_range:price": 2}
    manifest = read_manifest(result.manifest_uri, options)
    assert manifest["uri"].tolist() == [f[0] for f in files] and manifest["rows"].tolist() == [120, 80]
    assert manifest["content_hash"].tolist() == ["athena-3-a1", "athena-5-b2"]

    athena = boto3.client("athena", endpoint_url=moto_endpoint, region_name="us-east-1")
    ids = athena.list_query_executions()["QueryExecutionIds"]
    queries = [athena.get_query_execution(QueryExecutionId=i)["QueryExecution"]["Query"] for i in ids]
    target = next(q.split()[2] for q in queries if q.startswith("CREATE TABLE sales.prep_"))
    assert athena_ctas_sql("sales.raw", SCHEMA, target, "s3://lake/prep/run1/batches/", 64, window) in queries
    assert athena_quarantine_sql("sales.raw", SCHEMA, window) in queries
    assert athena_manifest_sql(target, SCHEMA) in queries


@pytest.mark.parametrize("uri, env, message", [
    ("athena://raw", {"ATHENA_OUTPUT_LOCATION": "s3://x/"}, "expected athena://database.table"),
    ("athena://sales.raw", {}, "ATHENA_OUTPUT_LOCATION"),
])
def test_the_athena_path_names_what_is_missing(uri, env, message):
    from operators.kit.prep import prepare_configured

    with pytest.raises(ValueError) as err:
        prepare_configured(uri, SCHEMA, "s3://lake/x", 8, env=env)
    assert message in str(err.value)


# --- bad input: every bad row is quarantined with its reason, never lost, never crashes prep -----------

CSV_HEADER = "segment,product,date,price,quantity,promo\n"


def good_lines(count: int, first: int = 0) -> list[str]:
    return [f"S{i % 3},P{i:04d},2026-01-0{1 + i % 5},{1 + i % 40}.5,{i % 90},yes\n" for i in range(first, first + count)]


def quarantine_of(result) -> pd.DataFrame:
    return pd.read_parquet(result.quarantine_uri)


NUMERIC_SCHEMA = InputSchema(
    columns=(*SCHEMA.columns, Column("discount", "float", nullable=True), Column("stock", "int", nullable=True)),
    unit_key=SCHEMA.unit_key, unique_key=SCHEMA.unique_key, time_column=SCHEMA.time_column)


@pytest.mark.parametrize("spelling", ["inf", "-inf", "Infinity", "+inf", "INF", " +Infinity ", "1e400", "-1e999"])
def test_an_infinity_in_any_numeric_column_is_quarantined_as_non_finite(tmp_path, spelling):
    lines = [line.rstrip("\n") + ",0.1,5\n" for line in good_lines(60)]
    header = CSV_HEADER.rstrip("\n") + ",discount,stock\n"
    spoiled = {1: ("price", 3), 2: ("quantity", 4), 3: ("discount", 6)}
    if spelling.strip().lstrip("+-").isalpha():  # an int column never parses infinity, yet it is reported as such
        spoiled[4] = ("stock", 7)
    for row, (_, field) in spoiled.items():
        fields = lines[row].rstrip("\n").split(",")
        fields[field] = spelling
        lines[row] = ",".join(fields) + "\n"
    (tmp_path / "in.csv").write_text(header + "".join(lines))
    result = prepare(str(tmp_path / "in.csv"), NUMERIC_SCHEMA, str(tmp_path / "out"), 8)
    assert result.quarantined_by_reason == {f"non_finite:{column}": 1 for column, _ in spoiled.values()}
    good = batches(result)
    assert len(good) == 60 - len(spoiled) and np.isfinite(good[["price", "quantity", "discount"]].to_numpy()).all()


def test_non_finite_parquet_values_are_quarantined_and_nan_is_missing(tmp_path):
    frame = sales().assign(discount=0.25, stock=3)
    frame.loc[0, "price"] = np.inf
    frame.loc[1, "quantity"] = -np.inf
    frame.loc[2, "discount"] = np.inf
    frame.loc[3, "discount"] = np.nan  # missing in a nullable column: kept, as NULL
    frame.loc[4, "quantity"] = np.nan  # missing in a required column: null:quantity
    table = pa.table({name: pa.array(frame[name].to_numpy() if frame[name].dtype == float else frame[name],
                                     from_pandas=frame[name].dtype != float) for name in frame.columns})
    pq.write_table(table, tmp_path / "in.parquet")
    result = prepare(str(tmp_path / "in.parquet"), NUMERIC_SCHEMA, str(tmp_path / "out"), 8)
    assert result.quarantined_by_reason == {"non_finite:discount": 1, "non_finite:price": 1,
                                            "non_finite:quantity": 1, "null:quantity": 1}
    good = batches(result)
    assert len(good) == len(frame) - 4
    assert good["discount"].isna().sum() == 1 and np.isfinite(good["discount"].dropna()).all()
    assert np.isfinite(good[["price", "quantity"]].to_numpy()).all()


def test_both_dialects_check_every_numeric_column_for_infinity():
    text_columns = [c.name for c in NUMERIC_SCHEMA.columns if c.dtype != "string"]
    for dialect, function in ((DUCKDB, "isinf"), (ATHENA, "is_infinite")):
        sql = SchemaSql(NUMERIC_SCHEMA, dialect, text_columns)
        reasons = dict(sql.checks())
        for column in ("price", "quantity", "discount", "stock"):
            assert "'infinity'" in reasons[f"non_finite:{column}"]  # spelled-out infinity, which Athena cannot cast
        for column in ("price", "quantity", "discount"):
            assert f"{function}(" in reasons[f"non_finite:{column}"]  # parsed infinity, e.g. 1e400
        assert [r for r, _ in sql.checks()] == [r for r, _ in SchemaSql(NUMERIC_SCHEMA, DUCKDB, text_columns).checks()]
    ctas = athena_ctas_sql("sales.raw", NUMERIC_SCHEMA, "sales.prepped", "s3://lake/x/", 8)
    assert "is_infinite(" in ctas


def test_csv_is_read_as_rfc_4180_and_malformed_lines_are_quarantined_with_file_and_line(tmp_path):
    lines = good_lines(3000)
    lines[1] = "S1,P9001,2026-01-02,1.5\n"  # too few fields, early (line 3)
    lines[2499] = "S1,P9002,2026-01-02,1.5,3,yes,extra\n"  # too many fields, late (line 2501)
    lines.append('"S1","P9003","2026-01-03","2.5","4","with, a comma"\n')  # the first quotes come late
    lines.append('S1,P9004,2026-01-03,2.5,4,"say ""hi"""\n')
    lines.append("S1,P9005,2026-01-03,2.5,4,caf\xe9\n")  # not UTF-8 (written as Latin-1 below)
    lines.append('S1,P9006,2026-01-03,2.5,4,"closed"and more\n')
    lines.append('S1,P9007,2026-01-03,2.5,4,"never closed\n')
    (tmp_path / "in.csv").write_bytes((CSV_HEADER + "".join(lines)).encode("latin-1"))
    result = prepare(str(tmp_path / "in.csv"), SCHEMA, str(tmp_path / "out"), 8)

    assert result.quarantined_by_reason == {"malformed:invalid_encoding": 1, "malformed:missing_columns": 1,
                                            "malformed:too_many_columns": 1, "malformed:unclosed_quote": 1,
                                            "malformed:unquoted_value": 1}
    assert result.rows_in == len(lines) == result.rows_ok + result.rows_quarantined
    quarantine = quarantine_of(result).set_index("_prep_reason")
    assert quarantine.loc["malformed:missing_columns", "_prep_line"] == 3
    assert quarantine.loc["malformed:too_many_columns", "_prep_line"] == 2501
    assert quarantine.loc["malformed:invalid_encoding", "_prep_line"] == 3004
    assert quarantine.loc["malformed:unquoted_value", "_prep_line"] == 3005
    assert quarantine.loc["malformed:unclosed_quote", "_prep_line"] == 3006
    assert set(quarantine["_prep_file"]) == {str(tmp_path / "in.csv")}
    assert "P9002" in quarantine.loc["malformed:too_many_columns", "_prep_raw"]
    good = batches(result).set_index("product")
    assert good.loc["P9003", "segment"] == "S1" and good.loc["P9003", "promo"] == "with, a comma"
    assert good.loc["P9004", "promo"] == 'say "hi"'
    assert result.units == len(good.index.unique())


# --- every line of a CSV file is accounted for -----------------------------------------------------

def read_back(result) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(good rows, quarantined rows) of a prepare."""
    return batches(result), (quarantine_of(result) if result.quarantine_uri else pd.DataFrame())


def test_a_quote_that_never_closes_is_one_quarantined_line_and_the_lines_after_it_are_read(tmp_path):
    lines = good_lines(3000)
    lines[999] = 'S1,P0999,2026-01-05,1.5,3,"never closed\n'  # line 1001: every later line would be read into it
    lines[1999] = 'S2,P1999,"2026-01-05,1.5,3,yes\n'  # line 2001: closed by a quote far below, then junk
    lines[2500] = '"S1","P2500","2026-01-01","2.5","4","quoted"\n'
    lines[2999] = 'S2,P2999,2026-01-05,1.5,3,"the last line, never closed\n'  # swallows nothing
    for name, newline in (("lf.csv", "\n"), ("crlf.csv", "\r\n")):
        (tmp_path / name).write_bytes((CSV_HEADER + "".join(lines)).replace("\n", newline).encode())
        result = prepare(str(tmp_path / name), SCHEMA, str(tmp_path / f"out-{name}"), 8, max_quarantined_share=0.5)

        assert result.rows_in == len(lines) == result.rows_ok + result.rows_quarantined, name
        assert result.quarantined_by_reason == {"malformed:unclosed_quote": 3}, name
        good, quarantine = read_back(result)
        assert sorted(quarantine["_prep_line"]) == [1001, 2001, 3001], name
        assert set(quarantine["_prep_file"]) == {str(tmp_path / name)}
        assert quarantine.set_index("_prep_line").loc[1001, "_prep_raw"] == lines[999].rstrip("\n")
        assert len(good) == len(lines) - 3 and {"P1000", "P2000", "P2500", "P2998"} <= set(good["product"]), name
        assert result.units == len(lines) - 3


def test_a_line_over_the_line_length_limit_is_quarantined_and_the_next_lines_are_read(tmp_path):
    lines = good_lines(50)
    lines[10] = "S1,P0010,2026-01-02,1.5,3," + "x" * 3_000_000 + "\n"  # DuckDB rejects it (reason was None)
    lines[20] = 'S1,P0020,2026-01-02,1.5,3,"' + "y" * 3_000_000 + '"\n'
    lines[30] = "S1,P0030,2026-01-02,1.5,3," + "z" * 40_000_000 + "\n"  # longer than DuckDB's buffer: it vanished
    (tmp_path / "long.csv").write_text(CSV_HEADER + "".join(lines))
    result = prepare(str(tmp_path / "long.csv"), SCHEMA, str(tmp_path / "out"), 8, max_quarantined_share=0.5)

    assert result.quarantined_by_reason == {"malformed:line_size_over_maximum": 3}
    assert result.rows_in == len(lines) == result.rows_ok + result.rows_quarantined
    good, quarantine = read_back(result)
    assert sorted(quarantine["_prep_line"]) == [12, 22, 32]
    assert quarantine["_prep_raw"].str.len().max() <= 10_000
    assert set(quarantine["_prep_raw"].str[:9]) == {"S1,P0010,", "S1,P0020,", "S1,P0030,"}
    assert {"P0011", "P0031", "P0049"} <= set(good["product"])


def test_quoted_line_breaks_make_one_row_and_quarantined_lines_keep_their_own_line_numbers(tmp_path):
    lines = good_lines(20)
    lines[2] = 'S2,P0002,2026-01-03,3.5,2,"two\nlines"\n'  # lines 4-5: one row
    lines[5] = 'S2,P0005,2026-01-01,6.5,5,"three\r\n\nlines"\n'  # lines 8-10 with an empty line inside: one row
    lines[8] = "\n"  # an empty line (13) is not a row
    lines[11] = "S2,P0011,2026-01-02\n"  # line 16: too few fields
    lines[14] = 'S2,P0014,2026-01-05,1.5,3,yes,"an extra\nfield"\n'  # lines 19-20: too many fields, one row
    lines[17] = "S2,P0017\n"  # line 23
    (tmp_path / "in.csv").write_text(CSV_HEADER + "".join(lines))
    result = prepare(str(tmp_path / "in.csv"), SCHEMA, str(tmp_path / "out"), 8, max_quarantined_share=0.5)

    assert result.rows_in == 19 == result.rows_ok + result.rows_quarantined
    assert result.quarantined_by_reason == {"malformed:missing_columns": 2, "malformed:too_many_columns": 1}
    good, quarantine = read_back(result)
    assert sorted(quarantine["_prep_line"]) == [16, 19, 23]
    assert quarantine.set_index("_prep_line").loc[19, "_prep_raw"] == lines[14].rstrip("\n")
    assert good.set_index("product").loc["P0005", "promo"] == "three\r\n\nlines"


def test_malformed_lines_count_in_the_window_of_their_date_when_it_can_be_read(tmp_path):
    lines = good_lines(40)  # dates 2026-01-01 .. 2026-01-05
    lines[0] = "S0,P0000,2026-01-01,1.5\n"  # malformed, its date before the window
    lines[1] = "S1,P0001,2026-01-04,2.5,1,yes,extra\n"  # malformed, its date in the window
    lines[2] = "S2,P0002\n"  # malformed, no date: counted in every window
    lines[3] = 'S0,P0003,2026-01-02,4.5,3,"never closed\n'  # an unclosed quote before the window
    (tmp_path / "in.csv").write_text(CSV_HEADER + "".join(lines))
    result = prepare(str(tmp_path / "in.csv"), SCHEMA, str(tmp_path / "out"), 8, window=("2026-01-03", "2026-01-05"),
                     max_quarantined_share=0.5)

    in_window = sum(line.split(",")[2] in ("2026-01-03", "2026-01-04") for line in good_lines(40)[4:])
    assert result.rows_ok == in_window
    assert result.quarantined_by_reason == {"malformed:missing_columns": 1, "malformed:too_many_columns": 1}
    assert result.rows_in == in_window + 2 == result.rows_ok + result.rows_quarantined
    assert sorted(quarantine_of(result)["_prep_line"]) == [3, 4]
    everything = prepare(str(tmp_path / "in.csv"), SCHEMA, str(tmp_path / "all"), 8, max_quarantined_share=0.5)
    assert everything.rows_in == 40 and everything.rows_quarantined == 4


def test_a_file_with_too_many_unclosed_quotes_is_refused_naming_its_lines(tmp_path):
    from operators.kit.prep import MAX_UNCLOSED_QUOTES

    lines = good_lines(200)
    for i in range(0, 200, 8):
        lines[i] = lines[i].replace(",yes", ',"yes')
    (tmp_path / "in.csv").write_text(CSV_HEADER + "".join(lines))
    with pytest.raises(PrepError) as error:
        prepare(str(tmp_path / "in.csv"), SCHEMA, str(tmp_path / "out"), 8, max_quarantined_share=1)
    message = str(error.value)
    assert f"in.csv: more than {MAX_UNCLOSED_QUOTES} lines open a quoted field that never closes" in message
    assert "lines 2, 10, 18," in message and "(\"\")" in message
    assert not (tmp_path / "out").exists()


def test_lines_the_reader_does_not_account_for_refuse_the_file(tmp_path):
    # A quoted field over DuckDB's buffer: its reader loses its place in the file and skips lines silently.
    lines = good_lines(20)
    lines[5] = 'S1,P0005,2026-01-02,1.5,3,"' + ("x" * 1000 + "\n") * 40_000 + '"\n'
    (tmp_path / "in.csv").write_text(CSV_HEADER + "".join(lines))
    with pytest.raises(PrepError, match=r"in.csv: the CSV reader accounted for \d+ of the file's \d+ lines"):
        prepare(str(tmp_path / "in.csv"), SCHEMA, str(tmp_path / "out"), 8, max_quarantined_share=1)


def test_other_delimiters_are_taken_from_the_header_and_quoted_keys_lose_their_quotes(tmp_path):
    (tmp_path / "semi").mkdir()
    (tmp_path / "semi" / "a.csv").write_text(CSV_HEADER.replace(",", ";") + "".join(
        line.replace(",", ";") for line in good_lines(50)))
    (tmp_path / "semi" / "b.csv").write_text(CSV_HEADER + "".join(
        f'"{line.split(",")[0]}",{line.split(",", 1)[1]}' for line in good_lines(50, first=50)))
    result = prepare(str(tmp_path / "semi"), SCHEMA, str(tmp_path / "out"), 8)
    assert (result.rows_in, result.rows_ok) == (100, 100)
    assert set(batches(result)["segment"]) == {"S0", "S1", "S2"}


def test_glob_characters_in_file_names_are_read_as_themselves_once(tmp_path):
    names = ["sales[1].csv", "sales1.csv", "a*b.csv", "a?b.csv", "x{1,2}.csv", "x1.csv", "s[!a]z.csv"]
    folder = tmp_path / "in[x]"
    folder.mkdir()
    for i, name in enumerate(names):
        (folder / name).write_text(CSV_HEADER + "".join(good_lines(10, first=100 * i)))
    result = prepare(str(folder), SCHEMA, str(tmp_path / "out"), 8)
    assert (result.rows_in, result.rows_ok) == (70, 70)
    assert sorted(batches(result)["product"]) == sorted(f"P{100 * i + j:04d}" for i in range(7) for j in range(10))
    for i, name in enumerate(names):
        one = prepare(str(folder / name), SCHEMA, str(tmp_path / f"one{i}"), 8)
        assert sorted(batches(one)["product"]) == [f"P{100 * i + j:04d}" for j in range(10)], name
    for i, name in enumerate(["sales[1].parquet", "sales1.parquet"]):
        sales().assign(product=f"Q{i}").drop_duplicates(["segment", "date"]).to_parquet(folder / name)
    (folder / "sales[1].csv").rename(tmp_path / "moved.csv")
    for name in names[1:]:
        (folder / name).unlink()
    parquet = prepare(str(folder / "sales[1].parquet"), SCHEMA, str(tmp_path / "pq"), 8)
    assert set(batches(parquet)["product"]) == {"Q0"}
    both = prepare(str(folder), SCHEMA, str(tmp_path / "pq2"), 8)
    assert sorted(batches(both)["product"].unique()) == ["Q0", "Q1"]


def test_keys_lose_leading_and_trailing_blanks(tmp_path):
    lines = good_lines(30)
    padded = [line.replace("S", " S", 1).replace(",P", ",P", 1) for line in lines[:10]]
    padded = [f"{line.split(',')[0]}\t,{line.split(',', 1)[1]}" for line in padded]
    (tmp_path / "in.csv").write_text(CSV_HEADER + "".join(padded + lines[10:]))
    result = prepare(str(tmp_path / "in.csv"), SCHEMA, str(tmp_path / "out"), 8)
    good = batches(result)
    assert set(good["segment"]) == {"S0", "S1", "S2"} and result.units == 30
    doubled = CSV_HEADER + "".join(lines) + "".join(f"{line.split(',')[0]} ,{line.split(',', 1)[1]}" for line in lines[:2])
    (tmp_path / "twice.csv").write_text(doubled)
    twice = prepare(str(tmp_path / "twice.csv"), SCHEMA, str(tmp_path / "out2"), 8)
    assert twice.quarantined_by_reason == {"duplicate": 2} and twice.units == 30


def test_unicode_blanks_around_keys_do_not_split_a_unit(tmp_path):
    lines = good_lines(100, first=0) + good_lines(100, first=0)
    blanks = ["\u00a0", "\u3000", "\u2007", "\u202f", "\ufeff", "\u200b", "\u2003\t"]
    padded = []
    for i, line in enumerate(lines[100:]):
        segment, product, day, rest = line.split(",", 3)
        day = "2026-01-2" + day[-1]  # the same units on other days
        blank = blanks[i % len(blanks)]
        padded.append(f"{blank}{segment},{product}{blank},{day},{rest}")
    (tmp_path / "in.csv").write_text(CSV_HEADER + "".join(lines[:100] + padded), encoding="utf-8")
    result = prepare(str(tmp_path / "in.csv"), SCHEMA, str(tmp_path / "out"), 8)
    assert (result.rows_ok, result.units) == (200, 100)
    good = batches(result)
    assert set(good["segment"]) == {"S0", "S1", "S2"} and good["product"].str.fullmatch(r"P\d{4}").all()
    assert good.groupby("product")["batch_id"].nunique().max() == 1


def test_compression_is_read_from_the_bytes_not_from_the_file_name(tmp_path):
    import gzip

    text = CSV_HEADER + "".join(good_lines(30))
    (tmp_path / "gzipped.csv").write_bytes(gzip.compress(text.encode()))  # gzip bytes under a .csv name
    (tmp_path / "plain.csv.gz").write_text(text)  # plain text under a .gz name
    for name in ("gzipped.csv", "plain.csv.gz"):
        result = prepare(str(tmp_path / name), SCHEMA, str(tmp_path / f"out-{name}"), 8)
        assert (result.rows_in, result.rows_ok, result.units) == (30, 30, 30), name
    broken = gzip.compress((text + 'S1,P9000,2026-01-01,1.5,3,"open\n' + "".join(good_lines(5, first=50))).encode())
    (tmp_path / "broken.csv").write_bytes(broken)
    result = prepare(str(tmp_path / "broken.csv"), SCHEMA, str(tmp_path / "out-broken"), 8, max_quarantined_share=0.5)
    assert (result.rows_in, result.rows_ok, result.quarantined_by_reason) == (36, 35, {"malformed:unclosed_quote": 1})
    assert list(quarantine_of(result)["_prep_line"]) == [32]

    (tmp_path / "zstd.csv").write_bytes(b"\x28\xb5\x2f\xfd" + bytes(range(60)))
    with pytest.raises(PrepError, match=r"zstd.csv: the file holds zstd-compressed data, not CSV text.*gzip"):
        prepare(str(tmp_path / "zstd.csv"), SCHEMA, str(tmp_path / "out-zstd"), 8)
    sales().to_parquet(tmp_path / "table.csv")
    with pytest.raises(PrepError, match=r"table.csv: the file holds Parquet.*\.parquet"):
        prepare(str(tmp_path / "table.csv"), SCHEMA, str(tmp_path / "out-pq"), 8)


def test_input_columns_named_like_prep_internals_cannot_collide(tmp_path):
    frame = sales().assign(reason="the supplier's reason", _dup_rank=7, bucket="b", filename="f", h=1)
    frame.loc[0, "price"] = -1.0
    frame = pd.concat([frame, frame.iloc[[5, 5]]], ignore_index=True)
    frame.to_parquet(tmp_path / "in.parquet")
    result = prepare(str(tmp_path / "in.parquet"), SCHEMA, str(tmp_path / "out"), 8)
    assert result.quarantined_by_reason == {"duplicate": 2, "out_of_range:price": 1}
    quarantine = quarantine_of(result)
    assert set(quarantine["reason"]) == {"the supplier's reason"}
    assert sorted(quarantine["_prep_reason"]) == ["duplicate", "duplicate", "out_of_range:price"]
    assert len(batches(result)) == len(sales()) - 1

    for name in ("_prep_reason", "_PREP_file", "_prep_anything"):
        (tmp_path / "bad.csv").write_text(CSV_HEADER.rstrip("\n") + f",{name}\n" + "".join(
            line.rstrip("\n") + ",x\n" for line in good_lines(5)))
        with pytest.raises(ValueError, match=rf"\['{name}'\] start with '_prep_'.*rename them") as error:
            prepare(str(tmp_path / "bad.csv"), SCHEMA, str(tmp_path / "refused"), 8)
        assert "bad.csv" in str(error.value)
        assert not (tmp_path / "refused").exists()
    with pytest.raises(ValueError, match="'_prep_x'.*reserved"):
        Column("_prep_x", "string")
    with pytest.raises(ValueError, match=r"\['Bucket'\] clash"):
        prepare(str(tmp_path / "in.parquet"), InputSchema(columns=(*SCHEMA.columns, Column("Bucket", "string")),
                                                          unit_key=("segment",)), str(tmp_path / "x"), 8)


def test_input_uri_must_lie_under_data_root_or_a_configured_prefix(tmp_path):
    from operators.kit.prep import PrepError, prepare_configured

    root, extra, outside = tmp_path / "data", tmp_path / "extra", tmp_path / "outside"
    for folder in (root, extra, outside):
        folder.mkdir()
        (folder / "in.csv").write_text(CSV_HEADER + "".join(good_lines(10)))
    env = {"DATA_ROOT": str(root), "AIRBATCH_INPUT_PREFIXES": f" {extra} ,s3://lake/allowed"}

    def run(uri: str):
        return prepare_configured(uri, SCHEMA, str(root / "prep"), 4, env=env)

    assert run(str(root / "in.csv")).rows_ok == 10
    assert run(str(extra)).rows_ok == 10
    (root / "sub").mkdir()
    (root / "sub" / "inside.csv").symlink_to(root / "in.csv")  # a link that stays inside is fine
    assert run(str(root / "sub")).rows_ok == 10
    (root / "sub" / "inside.csv").unlink()

    refused = [str(outside / "in.csv"), f"{root}/../outside/in.csv", f"file://{root}/in.csv",
               "http://example.com/in.csv", "s3://lake/other/in.csv", "s3://lake/allowed-not/in.csv",
               "s3://lake/allowed/../secret/in.csv", str(tmp_path / "*" / "in.csv")]
    (root / "leak.csv").symlink_to(outside / "in.csv")
    refused.append(str(root / "leak.csv"))
    for uri in refused:
        with pytest.raises(PrepError) as error:
            run(uri)
        assert uri in str(error.value) and ("AIRBATCH_INPUT_PREFIXES" in str(error.value)
                                            or "segment" in str(error.value)), uri
    (root / "leak.csv").unlink()
    (root / "linked").symlink_to(outside)  # a folder walked from inside DATA_ROOT, leading out of it
    with pytest.raises(PrepError, match="linked.*outside the allowed input locations.*AIRBATCH_INPUT_PREFIXES"):
        run(str(root))
    (root / "linked").unlink()
    (root / "sub" / "leak.csv").symlink_to(outside / "in.csv")
    with pytest.raises(PrepError, match="leak.csv.*outside the allowed"):
        run(str(root / "sub"))
    assert not (root / "prep" / "manifest.parquet").exists() or run(str(root / "in.csv"))


def test_more_than_max_quarantined_share_fails_with_the_counts_by_reason(tmp_path):
    lines = good_lines(80)
    for i in range(0, 16):
        lines[i] = lines[i].replace(f"{1 + i % 40}.5,", "n/a,", 1)
    lines[20] = "S0,P0020,2026-01-01,-3,4,yes\n"
    lines[21] = "S0,P0021\n"
    (tmp_path / "in.csv").write_text(CSV_HEADER + "".join(lines))
    from operators.kit.prep import PrepError

    with pytest.raises(PrepError) as error:
        prepare(str(tmp_path / "in.csv"), SCHEMA, str(tmp_path / "out"), 8)
    message = str(error.value)
    assert "18 of 80 rows" in message and "22.5%" in message and "max_quarantined_share=0.1" in message
    assert f"non_numeric:price: 16 (first: {tmp_path / 'in.csv'})" in message
    assert f"malformed:missing_columns: 1 (first: {tmp_path / 'in.csv'} line 23)" in message
    assert "out_of_range:price: 1" in message and "raise the run parameter max_quarantined_share" in message
    assert (tmp_path / "out" / "quarantine.parquet").exists() and not (tmp_path / "out" / "manifest.parquet").exists()
    assert len(pd.read_parquet(tmp_path / "out" / "quarantine.parquet")) == 18

    assert prepare(str(tmp_path / "in.csv"), SCHEMA, str(tmp_path / "out"), 8, max_quarantined_share=0.25).rows_ok == 62
    for share in (1.5, -0.1, True, "0.2"):
        with pytest.raises(ValueError, match="max_quarantined_share must be a number in 0..1"):
            prepare(str(tmp_path / "in.csv"), SCHEMA, str(tmp_path / "x"), 8, max_quarantined_share=share)
    # Only the rows in the window count: bad rows outside it are not part of the run.
    in_window = prepare(str(tmp_path / "in.csv"), SCHEMA, str(tmp_path / "w"), 8,
                        window=("2026-01-02", "2026-01-06"), max_quarantined_share=0.25)
    assert in_window.rows_in < 80


def test_an_empty_or_unusable_window_says_why(tmp_path):
    from operators.kit.prep import PrepError

    (tmp_path / "in.csv").write_text(CSV_HEADER + "".join(good_lines(20)))
    with pytest.raises(PrepError, match=r"no rows in the window \[2026-03-01, 2026-03-08\) of .*in.csv: its 'date' "
                                        r"values run from 2026-01-01 to 2026-01-05 \(20 rows\)"):
        prepare(str(tmp_path / "in.csv"), SCHEMA, str(tmp_path / "out"), 8, window=("2026-03-01", "2026-03-08"))
    (tmp_path / "bad.csv").write_text(CSV_HEADER + "".join(
        f"S0,P{i:04d},2026-01-0{1 + i % 5},-1,3,yes\n" for i in range(20)))
    with pytest.raises(PrepError) as error:
        prepare(str(tmp_path / "bad.csv"), SCHEMA, str(tmp_path / "out"), 8, window=("2026-01-01", "2026-01-03"),
                max_quarantined_share=1)
    message = str(error.value)
    assert message.startswith("no usable rows in the window [2026-01-01, 2026-01-03) of ")
    assert f"out_of_range:price: 8 (first: {tmp_path / 'bad.csv'})" in message


def test_errors_name_the_file_the_encoding_and_near_matching_columns(tmp_path):
    (tmp_path / "latin.csv").write_bytes(("segment,product,date,price,quantity,promo\xe9\n"
                                          + "".join(good_lines(5))).encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin.csv: the header line is not UTF-8 \(byte 0xe9.*iconv"):
        prepare(str(tmp_path / "latin.csv"), SCHEMA, str(tmp_path / "out"), 8)
    (tmp_path / "latin_rows.csv").write_bytes((CSV_HEADER + "".join(good_lines(5))
                                               + "S0,P9,2026-01-01,1.5,2,caf\xe9\n").encode("latin-1"))
    from operators.kit.prep import PrepError

    with pytest.raises(PrepError, match=r"malformed:invalid_encoding: 1 \(first: .*latin_rows.csv line 7\); "
                                        r"the file is not UTF-8"):
        prepare(str(tmp_path / "latin_rows.csv"), SCHEMA, str(tmp_path / "out"), 8)

    (tmp_path / "upper.csv").write_text("SEGMENT,product,Date,price ,qty,promo\n" + "".join(good_lines(5)))
    with pytest.raises(SchemaError) as error:
        prepare(str(tmp_path / "upper.csv"), SCHEMA, str(tmp_path / "out"), 8)
    assert error.value.missing == ("segment", "date", "price", "quantity")
    message = str(error.value)
    for text in ("'segment' (the input has 'SEGMENT')", "'date' (the input has 'Date')",
                 "'price' (the input has 'price ')", "upper.csv", "rename the input's columns"):
        assert text in message


def test_date_folders_never_silently_override_a_date_column_in_the_files(tmp_path):
    frame = sales()
    for day, rows in frame.groupby("date"):
        directory = tmp_path / "hive" / f"date={day.isoformat()}"
        directory.mkdir(parents=True)
        rows.to_parquet(directory / "part-0.parquet")
    agreed = prepare(str(tmp_path / "hive"), SCHEMA, str(tmp_path / "out"), 8)
    assert agreed.rows_ok == len(frame)
    misplaced = tmp_path / "hive" / "date=2026-01-02" / "part-1.parquet"
    frame[frame["date"] == DAY0 + dt.timedelta(days=8)].assign(product="X").to_parquet(misplaced)
    from operators.kit.prep import PrepError

    with pytest.raises(PrepError, match=r"part-1.parquet: column 'date' holds '2026-01-09' but the file sits in folder "
                                        r"date=2026-01-02 \(40 such row\(s\).*move each file"):
        prepare(str(tmp_path / "hive"), SCHEMA, str(tmp_path / "out"), 8)


def test_s3_inputs_read_glob_named_files_as_themselves_under_allowed_prefixes_only(moto_endpoint, tmp_path):
    from operators.kit.prep import PrepError, prepare_configured

    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    s3.create_bucket(Bucket="globs")
    names = ["sales[1].parquet", "sales1.parquet", "a*b.parquet", "x{1,2}.parquet"]
    for i, name in enumerate(names):
        sales().assign(product=f"Q{i}").drop_duplicates(["segment", "date"]).to_parquet(tmp_path / "f.parquet")
        s3.upload_file(str(tmp_path / "f.parquet"), "globs", f"in/{name}")
    (tmp_path / "c.csv").write_text(CSV_HEADER + "".join(good_lines(10)))
    s3.upload_file(str(tmp_path / "c.csv"), "globs", "csv/sales[1].csv")
    s3.upload_file(str(tmp_path / "c.csv"), "globs", "outside/in.csv")
    options = {"key": "testing", "secret": "testing", "endpoint_url": moto_endpoint,
               "client_kwargs": {"region_name": "us-east-1"}}
    env = {"DATA_ROOT": "s3://globs/data", "AIRBATCH_INPUT_PREFIXES": "s3://globs/in,s3://globs/csv"}

    def run(uri: str, out: str):
        return prepare_configured(uri, SCHEMA, f"s3://globs/data/{out}", 8, storage_options=options, env=env)

    folder = run("s3://globs/in/", "all")
    assert folder.rows_ok == 4 * 30 and sorted(batches_s3(folder, options)["product"].unique()) == ["Q0", "Q1", "Q2", "Q3"]
    one = run("s3://globs/in/sales[1].parquet", "one")
    assert set(batches_s3(one, options)["product"]) == {"Q0"}
    assert run("s3://globs/csv/sales[1].csv", "csv").rows_ok == 10
    with pytest.raises(PrepError, match="s3://globs/outside/in.csv.*AIRBATCH_INPUT_PREFIXES"):
        run("s3://globs/outside/in.csv", "refused")


def batches_s3(result, options) -> pd.DataFrame:
    import s3fs

    fs = s3fs.S3FileSystem(**options)
    manifest = read_manifest(result.manifest_uri, options)
    return pd.concat([pd.read_parquet(fs.open(uri, "rb")) for uri in manifest["uri"]], ignore_index=True)


@pytest.mark.parametrize("dag_file", ["units_of_work.py", "pricing_optimization.py"])
def test_both_dags_pass_max_quarantined_share_to_prepare(dag_file, data_root):
    import pendulum
    from airflow.dag_processing.dagbag import DagBag

    from operators.kit.prep import PrepError

    dag = next(iter(DagBag(dag_folder=str(Path(__file__).parents[3] / "dags" / dag_file)).dags.values()))
    assert dag.params["max_quarantined_share"] == 0.1
    source = data_root / "in.csv"
    bad = ["n/a" if i % 4 == 0 else "2.5" for i in range(40)]  # 25% of the rows are bad
    if dag_file == "units_of_work.py":
        text = "unit_id,seq,value\n" + "".join(f"u{i},0,{value}\n" for i, value in enumerate(bad))
    else:
        text = "segment,location,product,date,price,quantity,unit_cost,current_price\n" + "".join(
            f"S0,L1,P{i:04d},2026-01-0{1 + i % 5},{value},3,1,2\n" for i, value in enumerate(bad))
    source.write_text(text)
    params = dag.params.dump()
    params.update(input_uri=str(source), bucket_count=4)
    prepare_task = dag.get_task("prepare").python_callable
    kwargs = {"params": params, "dag": dag, "run_id": "manual__1", "source": {"uri": str(source), "started_at": 0.0},
              "data_interval_end": pendulum.datetime(2026, 1, 7, tz="UTC")}
    with pytest.raises(PrepError, match=r"10 of 40 rows.*25.0%.*max_quarantined_share=0.1"):
        prepare_task(**kwargs)
    params["max_quarantined_share"] = 0.3
    assert prepare_task(**kwargs)["rows_quarantined"] == 10
