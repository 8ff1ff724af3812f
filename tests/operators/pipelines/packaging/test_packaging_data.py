"""Synthetic packaging labels: fixed products, labels that accumulate week by week, a drift from a given day."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from batch_worker.workloads import get_workload
from operators.pipelines.packaging import packaging_data

SMALL = {"groups": 5, "products_per_group": 20, "labels_per_week": 600, "start_date": "2026-01-05", "seed": 4}


def read(folder: str) -> pd.DataFrame:
    return pd.concat([pd.read_parquet(p) for p in sorted(Path(folder).glob("week=*/part-0.parquet"))],
                     ignore_index=True)


def test_the_labels_follow_the_workload_schema():
    labels = packaging_data.week_labels(0, **SMALL)
    assert list(labels.columns) == list(get_workload("packaging").schema.names)
    assert len(labels) == 600 and labels["label_id"].is_unique
    assert set(labels["package_type"]) <= set(packaging_data.PACKAGE_TYPES)
    assert labels["damaged"].isin([0, 1]).all() and 0 < labels["damaged"].mean() < 1
    days = pd.to_datetime(labels["labelled_on"])
    assert days.min() >= pd.Timestamp("2026-01-05") and days.max() <= pd.Timestamp("2026-01-11")


def test_a_product_keeps_its_features_in_every_label():
    labels = pd.concat([packaging_data.week_labels(k, **SMALL) for k in range(3)])
    per_product = labels.groupby("product_id")[["weight_kg", "fragility", "product_group"]].nunique()
    assert (per_product == 1).all().all()
    inventory = packaging_data.products(5, 20, seed=4).set_index("product_id")
    sample = labels.drop_duplicates("product_id").set_index("product_id")
    assert (sample["fragility"] == inventory.loc[sample.index, "fragility"]).all()


def test_labels_accumulate_week_by_week_without_changing_earlier_weeks(tmp_path):
    first = packaging_data.ensure(str(tmp_path), until="2026-01-19", **SMALL)  # two weeks
    assert sorted(p.name for p in Path(first).glob("week=*")) == ["week=2026-01-05", "week=2026-01-12"]
    assert len(read(first)) == 1200
    written = (Path(first) / "week=2026-01-05" / "part-0.parquet").stat().st_mtime_ns
    later = packaging_data.ensure(str(tmp_path), until="2026-02-02", **SMALL)  # four weeks
    assert later == first
    weeks = sorted(p.name for p in Path(later).glob("week=*"))
    assert weeks == ["week=2026-01-05", "week=2026-01-12", "week=2026-01-19", "week=2026-01-26"]
    assert len(read(later)) == 2400
    assert (Path(later) / "week=2026-01-05" / "part-0.parquet").stat().st_mtime_ns == written  # kept, not rewritten
    fresh = read(packaging_data.ensure(str(tmp_path / "fresh"), until="2026-02-02", **SMALL))
    pd.testing.assert_frame_equal(read(later), fresh)  # the same weeks whether generated at once or week by week


def test_an_end_in_mid_week_includes_the_week_it_falls_in(tmp_path):
    folder = packaging_data.ensure(str(tmp_path), until="2026-01-14", **SMALL)  # a Wednesday
    assert sorted(p.name for p in Path(folder).glob("week=*")) == ["week=2026-01-05", "week=2026-01-12"]


def test_drift_changes_the_labels_from_its_first_day_only(tmp_path):
    plain = read(packaging_data.ensure(str(tmp_path), until="2026-03-02", **SMALL))
    drifted = read(packaging_data.ensure(str(tmp_path), until="2026-03-02", drift=1.5, drift_from="2026-02-09",
                                         **SMALL))
    assert list(plain["label_id"]) == list(drifted["label_id"])
    before = pd.to_datetime(plain["labelled_on"]) < pd.Timestamp("2026-02-09")
    pd.testing.assert_frame_equal(plain[before], drifted[before])
    assert drifted.loc[~before, "damaged"].mean() > plain.loc[~before, "damaged"].mean() + 0.1
    assert (drifted["damaged"] >= plain["damaged"]).all()  # the same draws, a higher damage probability
    assert packaging_data.label_balance(drifted)["positive_share"] > packaging_data.label_balance(plain)["positive_share"]


def test_an_end_before_the_start_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"until \(2026-01-05\) must be after start_date \(2026-01-05\)"):
        packaging_data.ensure(str(tmp_path), until="2026-01-05", **SMALL)
