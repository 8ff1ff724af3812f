"""Tests of operators.kit.prep.sql: value checks, keys and blanks, window, buckets, schema shape."""
from __future__ import annotations

import datetime as dt
import glob
import hashlib
import os

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from batch_worker.schema import InputSchema

from operators.kit.prep import ATHENA, DUCKDB, SchemaSql, athena_ctas_sql, bucketing_sql, prepare, read_manifest
from tests.operators.kit.prep.samples import (CSV_HEADER, NUMERIC_SCHEMA, SCHEMA, batches, expected_bucket, good_lines,
                                              sales)


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


def test_duckdb_bucket_expression_matches_the_documented_algorithm():
    keys = pd.DataFrame({"segment": ["S0", "S1", "é", "S2"], "product": ["P1", "P1", "P☃", ""]})
    with duckdb.connect() as con:
        con.register("keys", keys)
        buckets = con.execute(f"SELECT {bucketing_sql(SCHEMA, 977)} FROM keys").fetchall()
    assert [b for (b,) in buckets] == [expected_bucket(s, p, 977) for s, p in zip(keys["segment"], keys["product"])]


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
