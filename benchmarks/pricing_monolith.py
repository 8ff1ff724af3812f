"""The "before" of the pricing benchmark: the pricing workload's fit and price, one unit at a time.

`run_monolith` loops over units with pandas groupby and fits each with `np.polyfit`, pricing it with
scalar code; it produces the same columns and values as `PricingWorkload.run` (see that module for
the model) and serves both as the baseline timing and as an independent check of the vectorised
code. Cleaning (`usable_rows`) and the segments' pooled elasticities (pandas groupby sums) are
shared work, so the timing difference is the per-unit loop.

CLI: python -m benchmarks.pricing_monolith (--rows N [--units U] | --data DIR) [--seed S]
prints both timings as JSON.
"""
from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.dataset as ds

from batch_worker.workloads.pricing import (
    MIN_LOG_PRICE_VARIANCE,
    OUTPUT_COLUMNS,
    UNIT_KEY,
    PricingWorkload,
    check_params,
    empty_result,
    usable_rows,
)
from batch_worker.xp import device_name


def _recency_weight(day: pd.Series, as_of: int, params: dict[str, Any]) -> np.ndarray:
    return 0.5 ** ((as_of - day.to_numpy()) / params["half_life_days"])


def segment_priors(rows: pd.DataFrame, params: dict[str, Any], as_of: int) -> dict[str, float]:
    """Pooled within-unit elasticity per segment, over the units that have a fit."""
    train = rows[(rows["quantity"] > 0) & (rows["day"] <= as_of - params["holdout_days"])]
    keys = [train[key] for key in UNIT_KEY]
    frame = pd.DataFrame(
        {
            "w": _recency_weight(train["day"], as_of, params),
            "x": np.log(train["price"].to_numpy()),
            "y": np.log(train["quantity"].to_numpy()),
        },
        index=train.index,
    )
    weight_sum = frame["w"].groupby(keys).transform("sum")
    frame["dx"] = frame["x"] - (frame["w"] * frame["x"]).groupby(keys).transform("sum") / weight_sum
    frame["dy"] = frame["y"] - (frame["w"] * frame["y"]).groupby(keys).transform("sum") / weight_sum
    frame["sxx"] = frame["w"] * frame["dx"] ** 2
    frame["sxy"] = frame["w"] * frame["dx"] * frame["dy"]
    per_unit = frame.groupby(keys).agg(n=("w", "size"), w=("w", "sum"), sxx=("sxx", "sum"), sxy=("sxy", "sum"))
    has_fit = (per_unit["n"] >= params["min_points"]) & (per_unit["sxx"] > MIN_LOG_PRICE_VARIANCE * per_unit["w"])
    identified = per_unit[has_fit]
    pooled = identified.groupby(level="segment")[["sxx", "sxy"]].sum()
    return (pooled["sxy"] / pooled["sxx"]).to_dict()


def fit_unit_pandas(
    df_unit: pd.DataFrame, params: dict[str, Any], *, as_of: int | None = None, prior: float | None = None
) -> dict[str, Any]:
    """One output row for one unit's rows (as `usable_rows` returns them: a `day` column, clean values).

    `as_of` (day number) ends the holdout window, default the unit's latest day; `prior` is the
    segment's pooled elasticity to shrink toward, default none (no shrinkage).
    """
    params = {**PricingWorkload.default_params, **params}
    unit = df_unit.sort_values("day", kind="stable")
    latest = unit.iloc[-1]
    cost, current = float(latest["unit_cost"]), float(latest["current_price"])
    as_of = int(unit["day"].max()) if as_of is None else as_of
    sold = unit[unit["quantity"] > 0]
    cut_off = as_of - params["holdout_days"]
    train, holdout = sold[sold["day"] <= cut_off], sold[sold["day"] > cut_off]
    n_points = len(train)

    elasticity = intercept = holdout_mape = math.nan
    reason = None
    if n_points < params["min_points"]:
        reason = "too_few_points"
    else:
        x = np.log(train["price"].to_numpy())
        y = np.log(train["quantity"].to_numpy())
        weight = _recency_weight(train["day"], as_of, params)
        mean_x = np.average(x, weights=weight)
        if np.average((x - mean_x) ** 2, weights=weight) <= MIN_LOG_PRICE_VARIANCE:
            reason = "no_price_variation"
        else:
            own_slope, _ = np.polyfit(x, y, 1, w=np.sqrt(weight))
            if prior is None:
                elasticity = own_slope
            else:
                own_weight = n_points / max(n_points + params["shrinkage"], 1.0)
                elasticity = own_weight * own_slope + (1.0 - own_weight) * prior
            intercept = np.average(y, weights=weight) - elasticity * mean_x
            if len(holdout):
                predicted = np.exp(intercept + elasticity * np.log(holdout["price"].to_numpy()))
                actual = holdout["quantity"].to_numpy()
                holdout_mape = float(np.mean(np.abs(predicted - actual) / actual))
            if not elasticity < 0:
                reason = "non_negative_elasticity"

    low = max(
        max(params["min_price_ratio"] * current, cost * (1.0 + params["margin_floor"])),
        current * (1.0 - params["max_change"]),
    )
    high = min(params["max_price_ratio"] * current, current * (1.0 + params["max_change"]))
    if reason is None and not low <= high:
        reason = "infeasible_constraints"

    recommended = current
    if reason is None:
        unconstrained = cost * elasticity / (1.0 + elasticity) if elasticity < -1.0 else high
        recommended = min(max(unconstrained, low), high)

    def expected_profit(p: float) -> float:
        return (p - cost) * math.exp(intercept + elasticity * math.log(p)) if math.isfinite(elasticity) else math.nan

    profit_current, profit_recommended = expected_profit(current), expected_profit(recommended)
    return {
        **{key: latest[key] for key in UNIT_KEY},
        "n_points": n_points,
        "elasticity": elasticity,
        "intercept": intercept,
        "holdout_mape": holdout_mape,
        "current_price": current,
        "unit_cost": cost,
        "recommended_price": recommended,
        "price_change_pct": (recommended / current - 1.0) * 100.0,
        "expected_profit_current": profit_current,
        "expected_profit_recommended": profit_recommended,
        "uplift": profit_recommended - profit_current,
        "status": "ok" if reason is None else "degenerate",
        "reason": reason,
    }


def run_monolith(df: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
    """The pricing workload's output for `df`, computed unit by unit."""
    params = PricingWorkload().resolve_params(params)
    check_params(params)
    rows = usable_rows(df)
    if rows.empty:
        return empty_result()
    as_of = int(rows["day"].max())
    priors = segment_priors(rows, params, as_of)
    results = [
        fit_unit_pandas(unit, params, as_of=as_of, prior=priors.get(key[0]))
        for key, unit in rows.groupby(list(UNIT_KEY), sort=True)
    ]
    out = pd.DataFrame(results, columns=list(OUTPUT_COLUMNS))
    return out.astype({**dict.fromkeys(UNIT_KEY, "str"), "n_points": "int64", "status": "str", "reason": "str"})


def compare(df: pd.DataFrame, params: dict[str, Any] | None = None) -> dict[str, Any]:
    """Time `run_monolith` against the vectorised workload on `df`; report both and their largest difference."""
    workload = PricingWorkload()
    started = time.perf_counter()
    vectorised = workload.run(df, params or {})
    vectorised_s = time.perf_counter() - started
    started = time.perf_counter()
    monolith = run_monolith(df, params)
    monolith_s = time.perf_counter() - started
    units = len(monolith)
    both = vectorised["recommended_price"].notna()
    relative = (vectorised["recommended_price"] - monolith["recommended_price"]).abs() / monolith["recommended_price"]
    return {
        "rows": len(df),
        "units": units,
        "device": device_name(),
        "vectorised_s": round(vectorised_s, 3),
        "monolith_s": round(monolith_s, 3),
        "vectorised_units_per_s": round(units / vectorised_s),
        "monolith_units_per_s": round(units / monolith_s),
        "speedup": round(monolith_s / vectorised_s, 1),
        "same_status": bool((vectorised["reason"].fillna("") == monolith["reason"].fillna("")).all()),
        "max_relative_price_difference": float(relative[both].max()) if both.any() else 0.0,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Time the per-unit pandas pricing baseline against the workload.")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--rows", type=int, help="generate this many synthetic rows (no bad rows)")
    source.add_argument("--data", help="a parquet directory written by operators.pipelines.pricing.pricing_data")
    parser.add_argument("--units", type=int)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.data:
        df = ds.dataset(args.data, format="parquet").to_table().to_pandas()
    else:
        from operators.pipelines.pricing.pricing_data import generate

        with tempfile.TemporaryDirectory() as directory:
            generate(directory, args.rows, units=args.units, seed=args.seed, bad_row_fraction=0.0)
            df = ds.dataset(directory, format="parquet").to_table().to_pandas()
    print(json.dumps(compare(df), indent=2))


if __name__ == "__main__":
    main()
