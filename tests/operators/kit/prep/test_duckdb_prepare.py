"""Tests of operators.kit.prep.duckdb_prepare: schema errors, quarantine, duplicates, manifest, s3."""
from __future__ import annotations

import boto3
import pandas as pd
import pytest

from operators.kit.prep import SchemaError, prepare, read_manifest
from tests.operators.kit.prep.samples import SCHEMA, batches, expected_bucket, sales, spoiled_csv


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


def test_only_bad_rows_give_no_batches_and_an_empty_manifest(tmp_path):
    frame = sales(units=3, days=2).assign(price=-1.0)
    frame.to_parquet(tmp_path / "in.parquet")
    result = prepare(str(tmp_path / "in.parquet"), SCHEMA, str(tmp_path / "out"), 8, max_quarantined_share=1)
    assert (result.rows_ok, result.batches, result.units) == (0, 0, 0)
    assert result.quarantined_by_reason == {"out_of_range:price": 6}
    assert read_manifest(result.manifest_uri).empty
    assert len(pd.read_parquet(result.quarantine_uri)) == 6


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
