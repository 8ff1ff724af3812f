"""The pricing workload: registration, fit, price rules, degenerate units, agreement with the monolith."""
from __future__ import annotations

import datetime as dt
import sys
import types

import numpy as np
import pandas as pd
import pyarrow.dataset as ds
import pytest

from batch_worker import xp as xp_module
from batch_worker.workloads import BadData, get_workload
from batch_worker.workloads.pricing import OUTPUT_COLUMNS, PricingWorkload
from benchmarks.pricing_monolith import fit_unit_pandas, run_monolith
from operators.pipelines.pricing.pricing_data import generate, unit_table

START = dt.date(2026, 1, 5)
DAYS = 84
PRICE_PATTERN = np.array([1.0, 0.9, 1.1, 0.8, 1.2, 0.95, 1.05])


def unit_rows(segment, product, *, cost=4.0, current=8.5, slope=-2.0, intercept=5.0, days=DAYS, prices=None):
    """Noise-free rows of one unit: quantity = exp(intercept) * price**slope, prices cycling around `current`."""
    if prices is None:
        prices = current * PRICE_PATTERN[np.arange(days) % len(PRICE_PATTERN)]
    return pd.DataFrame(
        {
            "segment": segment,
            "location": "L000",
            "product": product,
            "date": [START + dt.timedelta(days=i) for i in range(days)],
            "price": prices,
            "quantity": np.exp(intercept) * prices**slope,
            "unit_cost": cost,
            "current_price": current,
        }
    )


def by_product(result: pd.DataFrame) -> pd.DataFrame:
    return result.set_index("product")


@pytest.fixture(scope="module")
def workload() -> PricingWorkload:
    return get_workload("pricing")


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A clean generated batch of 400 units and its ground truth."""
    directory = tmp_path_factory.mktemp("pricing")
    stats = generate(directory, rows=400 * DAYS - 3000, units=400, days=DAYS, seed=7, bad_row_fraction=0.0)
    batch = ds.dataset(directory, format="parquet").to_table().to_pandas()
    return batch, unit_table(stats["units"], seed=7)


def test_registered_with_schema(workload):
    assert isinstance(workload, PricingWorkload)
    assert workload.name == "pricing" and isinstance(workload.version, str)
    assert workload.schema.unit_key == ("segment", "location", "product")
    assert workload.schema.unique_key == ("segment", "location", "product", "date")
    assert workload.schema.time_column == "date"
    assert workload.schema.column("price").min == 0.01


def test_missing_column_is_bad_data(workload):
    with pytest.raises(BadData, match="unit_cost"):
        workload.run(unit_rows("S0", "P0").drop(columns="unit_cost"), {})


def test_unknown_or_invalid_params_are_refused(workload):
    with pytest.raises(ValueError, match="unknown parameter"):
        workload.run(unit_rows("S0", "P0"), {"halflife": 3})
    with pytest.raises(ValueError, match="max_change"):
        workload.run(unit_rows("S0", "P0"), {"max_change": 1.5})


def test_empty_batch_gives_empty_result(workload):
    result = workload.run(unit_rows("S0", "P0").iloc[:0], {})
    assert list(result.columns) == list(OUTPUT_COLUMNS) and result.empty


def test_exact_data_recovers_model_and_closed_form_price(workload):
    batch = pd.concat([unit_rows("S0", "elastic"), unit_rows("S1", "inelastic", slope=-0.5)])
    raw = workload.run(batch, {})
    assert list(raw.columns) == list(OUTPUT_COLUMNS)
    result = by_product(raw)

    elastic = result.loc["elastic"]
    assert elastic["status"] == "ok" and pd.isna(elastic["reason"])
    assert elastic["n_points"] == DAYS - 14
    assert elastic["elasticity"] == pytest.approx(-2.0, abs=1e-9)
    assert elastic["intercept"] == pytest.approx(5.0, abs=1e-9)
    assert elastic["holdout_mape"] == pytest.approx(0.0, abs=1e-9)
    # b = -2: p* = c * b / (1 + b) = 8.0, inside [8.5 * 0.85, 8.5 * 1.15].
    assert elastic["recommended_price"] == pytest.approx(8.0)
    assert elastic["uplift"] == pytest.approx(
        elastic["expected_profit_recommended"] - elastic["expected_profit_current"]
    )
    assert elastic["uplift"] > 0

    # -1 <= b < 0: profit rises with price, so the upper bound (+15 %).
    assert result.loc["inelastic", "recommended_price"] == pytest.approx(8.5 * 1.15)
    assert result.loc["inelastic", "price_change_pct"] == pytest.approx(15.0)


def test_degenerate_units_are_flagged_and_keep_their_price(workload):
    batch = pd.concat(
        [
            unit_rows("S0", "few", days=5),
            unit_rows("S1", "flat", prices=np.full(DAYS, 8.5)),
            unit_rows("S2", "rising", slope=0.7),
            unit_rows("S3", "costly", cost=9.5),
            unit_rows("S4", "fine"),
        ]
    )
    result = by_product(workload.run(batch, {}))
    expected = {
        "few": "too_few_points",
        "flat": "no_price_variation",
        "rising": "non_negative_elasticity",
        "costly": "infeasible_constraints",
    }
    for product, reason in expected.items():
        row = result.loc[product]
        assert (row["status"], row["reason"]) == ("degenerate", reason)
        assert row["recommended_price"] == row["current_price"] and row["price_change_pct"] == 0
    assert result.loc["fine", "status"] == "ok"
    assert np.isnan(result.loc["few", "elasticity"]) and np.isnan(result.loc["flat", "uplift"])
    assert result.loc["costly", "uplift"] == 0


def test_invalid_and_zero_quantity_rows_are_ignored(workload):
    clean = unit_rows("S0", "P0")
    dirty = clean.copy()
    dirty.loc[3, "price"] = -1.0
    dirty.loc[4, "quantity"] = np.nan
    dirty.loc[5, "segment"] = None
    dirty.loc[6, "quantity"] = 0.0
    result = workload.run(dirty, {})
    assert len(result) == 1 and result.loc[0, "n_points"] == DAYS - 14 - 4
    assert result.loc[0, "elasticity"] == pytest.approx(-2.0, abs=1e-9)


def test_shrinkage_pulls_toward_the_segment(workload):
    batch = pd.concat([unit_rows("S0", "steep", slope=-3.0), unit_rows("S0", "short", slope=-1.5, days=30)])
    own = by_product(workload.run(batch, {"shrinkage": 0.0}))["elasticity"]
    assert own["steep"] == pytest.approx(-3.0) and own["short"] == pytest.approx(-1.5)
    pooled = by_product(workload.run(batch, {"shrinkage": 1e12}))["elasticity"]
    assert pooled["steep"] == pytest.approx(pooled["short"]) and -3.0 < pooled["steep"] < -1.5
    shrunk = by_product(workload.run(batch, {}))["elasticity"]
    shift = (shrunk - own).abs()
    assert shift["short"] > shift["steep"] > 0  # fewer points, more shrinkage


def test_elasticity_recovered_on_clean_synthetic_data(workload, synthetic):
    batch, truth = synthetic
    result = workload.run(batch, {}).merge(truth, on=["segment", "location", "product"])
    well_identified = result[(result["kind"] == "regular") & (result["base_demand"] >= 40)]
    error = (well_identified["elasticity"] - well_identified["true_elasticity"]).abs()
    assert len(well_identified) > 100
    assert error.median() < 0.1
    assert (error < 0.2).mean() > 0.9
    kinds = result.groupby("kind")["reason"].agg(lambda r: set(r.fillna("ok")))
    assert kinds["sparse"] == {"too_few_points"}
    assert kinds["constant_price"] == {"no_price_variation"}
    assert kinds["cost_above_price"] == {"infeasible_constraints"}


def test_recommended_price_respects_bounds(workload, synthetic):
    batch, _ = synthetic
    params = workload.resolve_params({})
    result = workload.run(batch, {})
    ok = result[result["status"] == "ok"]
    assert len(ok) > 300
    ratio = ok["recommended_price"] / ok["current_price"]
    tolerance = 1e-12
    assert (ratio >= 1 - params["max_change"] - tolerance).all()
    assert (ratio <= 1 + params["max_change"] + tolerance).all()
    assert (ratio >= params["min_price_ratio"] - tolerance).all()
    assert (ratio <= params["max_price_ratio"] + tolerance).all()
    margin = ok["recommended_price"] / ok["unit_cost"] - 1
    assert (margin >= params["margin_floor"] - tolerance).all()
    assert (ok["expected_profit_recommended"] >= ok["expected_profit_current"] * (1 - tolerance)).all()


def test_vectorised_matches_monolith(workload, synthetic, tmp_path):
    batch, _ = synthetic
    generate(tmp_path, rows=6000, units=100, seed=3, bad_row_fraction=0.01)
    dirty = ds.dataset(tmp_path, format="parquet").to_table().to_pandas()
    dirty["segment"] = "D" + dirty["segment"]
    handmade = pd.concat([unit_rows("H0", "few", days=5), unit_rows("H1", "rising", slope=0.7)])
    mixed = pd.concat([batch, dirty, handmade], ignore_index=True)
    params = {"holdout_days": 10, "half_life_days": 30.0}

    vectorised = workload.run(mixed, params)
    monolith = run_monolith(mixed, params)
    assert len(vectorised) == len(monolith) == 400 + 100 + 2
    assert set(vectorised["reason"].dropna()) == {
        "too_few_points",
        "no_price_variation",
        "non_negative_elasticity",
        "infeasible_constraints",
    }
    pd.testing.assert_frame_equal(vectorised, monolith, rtol=1e-6, atol=1e-9)


def test_fit_unit_pandas_alone():
    row = fit_unit_pandas(unit_rows("S0", "P0").assign(day=lambda f: np.arange(len(f))), {})
    assert row["status"] == "ok" and row["elasticity"] == pytest.approx(-2.0)
    assert row["recommended_price"] == pytest.approx(8.0)


def test_get_xp_picks_numpy_without_cupy(monkeypatch):
    monkeypatch.delenv(xp_module.ENV_VAR, raising=False)
    monkeypatch.setitem(sys.modules, "cupy", None)  # import cupy now fails
    assert xp_module.get_xp() is np
    assert xp_module.get_xp("cupy") is np
    assert xp_module.device_name() == "cpu (numpy)"


def test_get_xp_survives_a_broken_cuda_runtime(monkeypatch):
    def no_driver():
        raise RuntimeError("cudaErrorNoDevice")

    fake = types.SimpleNamespace(cuda=types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=no_driver)))
    monkeypatch.setitem(sys.modules, "cupy", fake)
    monkeypatch.delenv(xp_module.ENV_VAR, raising=False)
    assert xp_module.get_xp() is np


def test_get_xp_environment_overrides_preference(monkeypatch):
    fake = types.SimpleNamespace(cuda=types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=lambda: 1)))
    monkeypatch.setitem(sys.modules, "cupy", fake)
    monkeypatch.setenv(xp_module.ENV_VAR, "numpy")
    assert xp_module.get_xp("cupy") is np
    monkeypatch.setenv(xp_module.ENV_VAR, "auto")
    assert xp_module.get_xp("numpy") is fake
    monkeypatch.setenv(xp_module.ENV_VAR, "tpu")
    with pytest.raises(ValueError, match="tpu"):
        xp_module.get_xp()


def test_to_numpy_passes_numpy_through():
    array = np.arange(3)
    assert xp_module.to_numpy(array) is array
    assert xp_module.to_numpy([1, 2]).tolist() == [1, 2]
