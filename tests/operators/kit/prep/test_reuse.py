"""Tests of operators.kit.prep.reuse: when an earlier prepare is reused or copied, and when not."""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import shutil
from pathlib import Path

import boto3
import pandas as pd
import pytest

from operators.kit.prep import PrepError, prepare, read_manifest
from tests.operators.kit.prep.samples import SCHEMA, batches, sales, spoiled_csv


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


def test_the_fingerprint_covers_the_code_of_every_prep_module():
    """A change to any module of prep changes every fingerprint, so no reuse outlives a change to prep."""
    from operators.kit.prep import reuse

    package = Path(reuse.__file__).resolve().parent
    modules = set(package.glob("*.py"))
    assert len(modules) > 1 and modules <= {Path(path).resolve() for path in reuse._PREP_CODE}
