"""Evaluate a pricing run against the last approved version, and propose approve, reject or review.

Metrics over all units of the run (`metrics`), their deltas against the current approved version
(`compare`), and a proposal (`propose`) from two sets of limits:

- `reject` limits are hard: breaking any one proposes "reject";
- `approve` limits are the comfort zone: meeting every one proposes "approve";
- anything in between proposes "review": a person decides in the Airflow UI.

A metric absent from a limit set is not checked. Deltas need a previous approved version; the
first version is judged on its own metrics.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

DEFAULT_THRESHOLDS: dict[str, dict[str, float]] = {
    "approve": {"max_mape_p50": 0.35, "min_coverage": 0.85, "max_degenerate_share": 0.15,
                "max_mape_p50_increase": 0.05, "max_input_shift": 0.2, "max_dead_letter_share": 0.0},
    "reject": {"max_mape_p50": 0.6, "min_coverage": 0.5, "max_degenerate_share": 0.4,
               "max_mape_p50_increase": 0.2, "max_dead_letter_share": 0.05},
}
#: limit name -> (metric or delta name, "max" | "min")
LIMITS = {
    "max_mape_p50": ("mape_p50", "max"),
    "min_coverage": ("coverage", "min"),
    "max_degenerate_share": ("degenerate_share", "max"),
    "max_mape_p50_increase": ("mape_p50_increase", "max"),
    "max_input_shift": ("input_shift", "max"),
    "max_dead_letter_share": ("dead_letter_share", "max"),
}


def check_thresholds(thresholds: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Merge `thresholds` over the defaults; raise ValueError naming any unknown key or bad value."""
    merged = {kind: dict(limits) for kind, limits in DEFAULT_THRESHOLDS.items()}
    for kind, limits in (thresholds or {}).items():
        if kind not in merged:
            raise ValueError(f"thresholds: unknown set {kind!r}; expected 'approve' and/or 'reject'")
        if not isinstance(limits, dict):
            raise ValueError(f"thresholds.{kind} must be an object of limits")
        for name, value in limits.items():
            if name not in LIMITS:
                raise ValueError(f"thresholds.{kind}: unknown limit {name!r}; known: {sorted(LIMITS)}")
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                raise ValueError(f"thresholds.{kind}.{name} must be a number, got {value!r}")
            merged[kind][name] = float(value)
    return merged


def _quantiles(values: pd.Series, prefix: str) -> dict[str, float | None]:
    values = values[np.isfinite(values)]
    if values.empty:
        return {f"{prefix}_p10": None, f"{prefix}_p50": None, f"{prefix}_p90": None}
    q = values.quantile([0.1, 0.5, 0.9]).to_numpy()
    return {f"{prefix}_p10": float(q[0]), f"{prefix}_p50": float(q[1]), f"{prefix}_p90": float(q[2])}


def metrics(prices: pd.DataFrame, units_in_input: int, units_dead_lettered: int = 0) -> dict[str, Any]:
    """Metrics over every unit's result row (the pricing workload's output, all batches concatenated)."""
    ok = prices[prices["status"] == "ok"]
    degenerate = prices[prices["status"] != "ok"]
    current_profit = float(ok["expected_profit_current"].sum())
    uplift = float(ok["uplift"].sum())
    result: dict[str, Any] = {
        "units_in_input": int(units_in_input),
        "units_scored": int(len(prices)),
        "units_priced": int(len(ok)),
        "units_dead_lettered": int(units_dead_lettered),
        "coverage": len(ok) / units_in_input if units_in_input else 0.0,
        "degenerate_share": len(degenerate) / len(prices) if len(prices) else 0.0,
        "dead_letter_share": units_dead_lettered / units_in_input if units_in_input else 0.0,
        "degenerate_by_reason": {str(k): int(v) for k, v in degenerate["reason"].value_counts().sort_index().items()},
        "expected_profit_current": current_profit,
        "expected_profit_recommended": float(ok["expected_profit_recommended"].sum()),
        "uplift": uplift,
        "uplift_pct": uplift / current_profit if current_profit else None,
        "share_price_changed": float((ok["price_change_pct"].abs() > 1e-9).mean()) if len(ok) else 0.0,
        **_quantiles(ok["holdout_mape"], "mape"),
        **_quantiles(ok["elasticity"], "elasticity"),
        **_quantiles(ok["price_change_pct"], "price_change"),
    }
    return result


def input_shift(current: dict[str, Any], previous: dict[str, Any]) -> float | None:
    """Largest relative change of the input's size and distribution against the previous version's input."""
    changes = []
    for name in ("rows", "units"):
        if previous.get(name):
            changes.append(abs(current[name] - previous[name]) / previous[name])
    for name in ("mean_log_price", "mean_log_quantity"):
        if previous.get(name) is not None and current.get(name) is not None:
            scale = max(abs(previous[name]), 1.0)
            changes.append(abs(current[name] - previous[name]) / scale)
    return max(changes) if changes else None


def compare(current: dict[str, Any], current_input: dict[str, Any], previous: dict[str, Any] | None) -> dict[str, Any]:
    """Deltas against the previous approved version's record (None before the first approval)."""
    if previous is None:
        return {"previous_version": None}
    before = previous["metrics"]
    delta = {"previous_version": previous["version"]}
    for name in ("mape_p50", "coverage", "degenerate_share", "uplift_pct", "units_priced"):
        if current.get(name) is not None and before.get(name) is not None:
            delta[f"{name}_delta"] = current[name] - before[name]
    delta["mape_p50_increase"] = delta.get("mape_p50_delta")
    delta["input_shift"] = input_shift(current_input, previous.get("input_stats", {}))
    return delta


def propose(values: dict[str, Any], thresholds: dict[str, dict[str, float]]) -> tuple[str, list[str]]:
    """("approve" | "reject" | "review", reasons) from metrics and deltas merged in `values`."""
    def broken(kind: str) -> list[str]:
        found = []
        for name, limit in thresholds[kind].items():
            metric, direction = LIMITS[name]
            value = values.get(metric)
            if value is None:
                continue
            if (direction == "max" and value > limit) or (direction == "min" and value < limit):
                found.append(f"{metric} {value:.4g} {'>' if direction == 'max' else '<'} {kind} limit {limit:g}")
        return found

    hard = broken("reject")
    if hard:
        return "reject", hard
    soft = broken("approve")
    if soft:
        return "review", soft
    return "approve", ["every approve limit met"]


def input_stats(prepared: dict[str, Any], window: tuple[str, str] | None) -> dict[str, Any]:
    """Size and distribution of the prepared input (the good rows in the batches) for shift detection."""
    import duckdb

    from operators.kit.engine import location

    batches = location(prepared["out_uri"])
    stats: dict[str, Any] = {"rows": prepared["rows_ok"], "units": prepared["units"], "rows_in": prepared["rows_in"],
                             "rows_quarantined": prepared["rows_quarantined"],
                             "quarantined_by_reason": prepared["quarantined_by_reason"],
                             "window": list(window) if window else None,
                             "mean_log_price": None, "mean_log_quantity": None, "first_date": None, "last_date": None}
    if not prepared["rows_ok"]:
        return stats
    with duckdb.connect() as con:
        if batches.remote:
            con.register_filesystem(batches.fs)
        glob = batches.join("batches", "*", "*.parquet").replace("'", "''")
        row = con.execute(
            f"SELECT avg(ln(price)), avg(ln(quantity)) FILTER (WHERE quantity > 0), min(date), max(date) "
            f"FROM read_parquet('{glob}', hive_partitioning = false)").fetchone()
    stats.update(mean_log_price=row[0], mean_log_quantity=row[1], first_date=str(row[2]), last_date=str(row[3]))
    return stats

