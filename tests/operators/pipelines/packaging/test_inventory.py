"""The synthetic inventory: the training products on day 0, new products every day, growth that keeps earlier days."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from batch_worker.workloads import get_workload
from operators.pipelines.packaging import inventory, packaging_data

SMALL = {"groups": 6, "products_per_group": 10, "new_per_day": 4, "start_date": "2026-03-01", "seed": 2}


def read(folder: str) -> pd.DataFrame:
    return pd.concat([pd.read_parquet(p) for p in sorted(Path(folder).glob("day=*/part-0.parquet"))],
                     ignore_index=True)


def test_day_zero_holds_the_training_products_and_later_days_a_few_new_ones():
    initial = inventory.day_products(0, **SMALL)
    assert list(initial.columns) == list(get_workload("packaging_scoring").schema.names)
    training = packaging_data.products(6, 10, seed=2)
    pd.testing.assert_frame_equal(initial.drop(columns="added_on"), training)
    day = inventory.day_products(3, **SMALL)
    assert len(day) == 4 and set(day["added_on"].astype(str)) == {"2026-03-04"}
    assert set(day["product_group"]) <= set(packaging_data.group_names(6))
    assert not set(day["product_id"]) & set(initial["product_id"])
    pd.testing.assert_frame_equal(day, inventory.day_products(3, **SMALL))
    assert not day.equals(inventory.day_products(3, **{**SMALL, "seed": 3}))


def test_ensure_grows_day_by_day_and_keeps_the_days_written(tmp_path):
    first = inventory.ensure(str(tmp_path), until="2026-03-04", **SMALL)
    grown = inventory.ensure(str(tmp_path), until="2026-03-06", **SMALL)
    assert first == grown
    products = read(grown)
    assert len(products) == 60 + 4 * 4 == inventory.products_added(since="1970-01-01", until="2026-03-06", **{
        k: SMALL[k] for k in ("groups", "products_per_group", "new_per_day", "start_date")})
    assert products["product_id"].is_unique
    assert pd.to_datetime(products["added_on"]).max() == pd.Timestamp("2026-03-05")


def test_products_added_counts_a_window():
    sizes = {k: SMALL[k] for k in ("groups", "products_per_group", "new_per_day", "start_date")}
    assert inventory.products_added(since="2026-03-02", until="2026-03-05", **sizes) == 12
    assert inventory.products_added(since="2026-02-01", until="2026-03-02", **sizes) == 60
    assert inventory.products_added(since="2026-03-05", until="2026-03-05", **sizes) == 0


def test_true_models_give_the_generators_damage_logit():
    truth = packaging_data.unit_truth(6, seed=2)
    models = inventory.true_models(6, seed=2)
    products = packaging_data.products(6, 10, seed=2)
    for unit in (0, 7, 23):
        row, model = truth.iloc[unit], models.iloc[unit]
        assert (row["package_type"], row["product_group"]) == (model["package_type"], model["product_group"])
        chosen = products[products["product_group"] == row["product_group"]]
        effects = row[[f"effect_{f}" for f in packaging_data.FEATURES]].to_numpy(dtype=float)
        expected = row["intercept"] + packaging_data.standard_features(chosen) @ effects
        raw = model["intercept"] + chosen[list(packaging_data.FEATURES)].to_numpy() @ model[
            [f"coef_{f}" for f in packaging_data.FEATURES]].to_numpy(dtype=float)
        np.testing.assert_allclose(raw, expected)
