"""Pricing's evaluator: metrics over all units' prices, deltas against the last approved version, limits.

`PricingEvaluator.limits` are the defaults (`approve_<limit>` / `reject_<limit>` run params
override them); `operators.kit.evaluation.propose` applies them: a reject level broken proposes
reject, every approve level met proposes approve, anything in between review. Deltas need a
previous approved version; the first version is judged on its own metrics.

Light at import (NumPy, pandas, DuckDB and matplotlib are imported inside functions): a DAG file
reads `LIMITS` at parse time.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from operators.kit import Evaluator, Fanout, Limit, Prepared, ReportSection, VersionRecord, number, quantiles

if TYPE_CHECKING:
    import pandas as pd

LIMITS = (
    Limit("mape_p50", "max", approve=0.35, reject=0.6,
          description="median holdout MAPE of the priced units (the error of the fitted demand on held-out days)"),
    Limit("coverage", "min", approve=0.85, reject=0.5, description="priced units / units in the input"),
    Limit("degenerate_share", "max", approve=0.15, reject=0.4,
          description="share of scored units that keep their price (too few points, no price variation, "
                      "non-negative elasticity, infeasible constraints)"),
    Limit("mape_p50_increase", "max", approve=0.05, reject=0.2,
          description="median holdout MAPE minus the last approved version's"),
    Limit("input_shift", "max", approve=0.2, reject=None,
          description="largest relative change of rows, units, mean log price and mean log quantity against "
                      "the last approved version's input"),
    Limit("dead_letter_share", "max", approve=0.0, reject=0.05,
          description="units of failed batches / units in the input"),
)


def input_shift(current: dict[str, Any], previous: dict[str, Any]) -> float | None:
    """Largest relative change of the input's size and distribution against the previous version's input."""
    changes = []
    for name in ("rows", "units"):
        if previous.get(name) and current.get(name) is not None:
            changes.append(abs(current[name] - previous[name]) / previous[name])
    for name in ("mean_log_price", "mean_log_quantity"):
        if previous.get(name) is not None and current.get(name) is not None:
            scale = max(abs(previous[name]), 1.0)
            changes.append(abs(current[name] - previous[name]) / scale)
    return max(changes) if changes else None


class PricingEvaluator(Evaluator):
    name = "pricing"
    limits = LIMITS
    artifact = "prices.parquet"

    def input_stats(self, prepared: Prepared) -> dict[str, Any]:
        """Size and distribution of the prepared input (the good rows in the batches) for shift detection."""
        import duckdb

        from operators.kit import location

        window = prepared.get("window")
        stats: dict[str, Any] = {"rows": prepared["rows_ok"], "units": prepared["units"],
                                 "rows_in": prepared["rows_in"], "rows_quarantined": prepared["rows_quarantined"],
                                 "quarantined_by_reason": prepared["quarantined_by_reason"],
                                 "window": list(window) if window else None, "mean_log_price": None,
                                 "mean_log_quantity": None, "first_date": None, "last_date": None}
        if not prepared["rows_ok"]:
            return stats
        batches = location(prepared["out_uri"])
        with duckdb.connect() as con:
            if batches.remote:
                con.register_filesystem(batches.fs)
            glob = batches.join("batches", "*", "*.parquet").replace("'", "''")
            row = con.execute(
                f"SELECT avg(ln(price)), avg(ln(quantity)) FILTER (WHERE quantity > 0), min(date), max(date) "
                f"FROM read_parquet('{glob}', hive_partitioning = false)").fetchone()
        stats.update(mean_log_price=row[0], mean_log_quantity=row[1], first_date=str(row[2]), last_date=str(row[3]))
        return stats

    def metrics(self, outputs: "pd.DataFrame", prepared: Prepared, fanout: Fanout) -> dict[str, Any]:
        """Metrics over every unit's result row (all batches' prices concatenated)."""
        units_in_input, units_dead_lettered = int(prepared["units"]), int(fanout.get("units_failed", 0))
        ok = outputs[outputs["status"] == "ok"]
        degenerate = outputs[outputs["status"] != "ok"]
        current_profit = float(ok["expected_profit_current"].sum())
        uplift = float(ok["uplift"].sum())
        return {
            "units_in_input": units_in_input,
            "units_scored": int(len(outputs)),
            "units_priced": int(len(ok)),
            "units_dead_lettered": units_dead_lettered,
            "coverage": len(ok) / units_in_input if units_in_input else 0.0,
            "degenerate_share": len(degenerate) / len(outputs) if len(outputs) else 0.0,
            "dead_letter_share": units_dead_lettered / units_in_input if units_in_input else 0.0,
            "degenerate_by_reason": {str(k): int(v)
                                     for k, v in degenerate["reason"].value_counts().sort_index().items()},
            "expected_profit_current": current_profit,
            "expected_profit_recommended": float(ok["expected_profit_recommended"].sum()),
            "uplift": uplift,
            "uplift_pct": uplift / current_profit if current_profit else None,
            "share_price_changed": float((ok["price_change_pct"].abs() > 1e-9).mean()) if len(ok) else 0.0,
            **quantiles(ok["holdout_mape"], "mape"),
            **quantiles(ok["elasticity"], "elasticity"),
            **quantiles(ok["price_change_pct"], "price_change"),
        }

    def compare(self, metrics: dict[str, Any], input_stats: dict[str, Any],
                previous: VersionRecord | None) -> dict[str, Any]:
        """Deltas against the previous approved version's record (None before the first approval)."""
        if previous is None:
            return {"previous_version": None}
        before = previous["metrics"]
        delta: dict[str, Any] = {"previous_version": previous["version"]}
        for name in ("mape_p50", "coverage", "degenerate_share", "uplift_pct", "units_priced"):
            if metrics.get(name) is not None and before.get(name) is not None:
                delta[f"{name}_delta"] = metrics[name] - before[name]
        delta["mape_p50_increase"] = delta.get("mape_p50_delta")
        delta["input_shift"] = input_shift(input_stats, previous.get("input_stats") or {})
        return delta

    def report_sections(self, outputs: "pd.DataFrame", metrics: dict[str, Any],
                        comparison: dict[str, Any]) -> list[ReportSection]:
        from operators.kit import table
        from operators.pipelines.pricing import report

        return [ReportSection("Recommended prices", figures=report.plots(outputs),
                              html="<h3>Units that keep their price, by reason</h3>"
                                   + table(metrics.get("degenerate_by_reason") or {}))]

    def summary_lines(self, metrics: dict[str, Any], comparison: dict[str, Any]) -> list[str]:
        lines = [
            f"coverage {number(metrics.get('coverage'))} ({number(metrics.get('units_priced'))} of "
            f"{number(metrics.get('units_in_input'))} units priced), degenerate share "
            f"{number(metrics.get('degenerate_share'))}, dead-letter share {number(metrics.get('dead_letter_share'))}",
            f"median holdout MAPE {number(metrics.get('mape_p50'))} (p10 {number(metrics.get('mape_p10'))}, "
            f"p90 {number(metrics.get('mape_p90'))})",
            f"expected profit uplift {number(metrics.get('uplift_pct'), '{:.1%}')}; prices changed for "
            f"{number(metrics.get('share_price_changed'), '{:.0%}')} of priced units, median change "
            f"{number(metrics.get('price_change_p50'), '{:+.3g}%')}",
        ]
        if comparison.get("previous_version"):
            lines.append(f"against version {comparison['previous_version']}: MAPE increase "
                         f"{number(comparison.get('mape_p50_increase'), '{:+.3g}')}, coverage change "
                         f"{number(comparison.get('coverage_delta'), '{:+.3g}')}, input shift "
                         f"{number(comparison.get('input_shift'))}")
        else:
            lines.append("no approved version before this one: nothing to compare with")
        return lines
