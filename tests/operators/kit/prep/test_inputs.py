"""Tests of operators.kit.prep.inputs: input forms, file names, headers, compression, allowed locations."""
from __future__ import annotations

import boto3
import pandas as pd
import pytest

from operators.kit.prep import PrepError, prepare, read_manifest
from tests.operators.kit.prep.samples import CSV_HEADER, SCHEMA, batches, batches_s3, good_lines, quarantine_of, sales


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


def test_mixed_formats_are_refused(tmp_path):
    sales().to_csv(tmp_path / "a.csv", index=False)
    sales().to_parquet(tmp_path / "b.parquet")
    with pytest.raises(ValueError, match=r"mixes formats \['csv', 'parquet'\]"):
        prepare(str(tmp_path), SCHEMA, str(tmp_path / "out"), 8)


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
