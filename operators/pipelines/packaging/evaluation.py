"""How a packaging model version is judged: holdout quality, failed units, and what moved since the last approval.

Metrics come from every unit's row of the training outputs (`batch_worker.workloads.packaging`):
the median holdout AUC of the fitted units, the mean holdout log-loss over their holdout labels,
the share of the input's units without a model (degenerate or dead-lettered), and the label
balance (damaged share) overall and by package type. Against the last approved version: the AUC
drop, the log-loss increase, the label-distribution shift (largest change of a damaged share) and
the relative change in the number of labels and units. `LIMITS` hold the default levels; the
`approve_<limit>` / `reject_<limit>` run params override them. Deltas need an approved version
before; the first version is judged on its own metrics.

Light at import (NumPy, pandas and matplotlib are imported inside functions): the DAG file reads
`LIMITS` at parse time.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from operators.kit import Evaluator, Fanout, Limit, Prepared, ReportSection, VersionRecord, number, quantiles

if TYPE_CHECKING:
    import pandas as pd

LIMITS = (
    Limit("auc_p50", "min", approve=0.7, reject=0.55,
          description="median holdout AUC of the fitted units (how well damaged labels rank above intact ones)"),
    Limit("failed_unit_share", "max", approve=0.1, reject=0.5,
          description="units of the input without a model (degenerate or in a failed batch) / units in the input"),
    Limit("auc_p50_drop", "max", approve=0.02, reject=0.1,
          description="the last approved version's median holdout AUC minus this one's"),
    Limit("log_loss_increase", "max", approve=0.02, reject=0.1,
          description="mean holdout log-loss minus the last approved version's"),
    Limit("label_shift", "max", approve=0.02, reject=0.15,
          description="largest change of the damaged share of the labels, overall or of one package type, against "
                      "the last approved version's labels"),
    Limit("labels_change", "max", approve=0.5, reject=None,
          description="relative change of the number of labels against the last approved version (labels grow "
                      "every week; a drop or a jump is looked at)"),
    Limit("units_change", "max", approve=0.05, reject=0.5,
          description="relative change of the number of units against the last approved version"),
)


def positive_shares(outputs: "pd.DataFrame") -> dict[str, float]:
    """Damaged share of the labels, overall ("all") and by package type."""
    labels, positives = outputs["labels"].sum(), outputs["positives"].sum()
    shares = {"all": float(positives / labels) if labels else None}
    by_type = outputs.groupby("package_type")[["positives", "labels"]].sum()
    shares.update({str(k): float(row["positives"] / row["labels"]) for k, row in by_type.iterrows() if row["labels"]})
    return shares


def label_shift(now: dict[str, float | None], before: dict[str, float | None]) -> float | None:
    """Largest absolute change of a damaged share present in both."""
    changes = [abs(now[k] - before[k]) for k in now if now[k] is not None and before.get(k) is not None]
    return max(changes) if changes else None


def relative_change(now: float | None, before: float | None) -> float | None:
    if now is None or not before:
        return None
    return abs(now - before) / before


class PackagingEvaluator(Evaluator):
    name = "packaging"
    limits = LIMITS
    artifact = "models.parquet"

    def metrics(self, outputs: "pd.DataFrame", prepared: Prepared, fanout: Fanout) -> dict[str, Any]:
        units_in_input = int(prepared["units"])
        fitted = outputs[outputs["status"] == "ok"]
        degenerate = outputs[outputs["status"] != "ok"]
        held = fitted[fitted["holdout_log_loss"].notna()]
        holdout_labels = int(held["holdout_labels"].sum())
        return {
            "units_in_input": units_in_input,
            "units_scored": int(len(outputs)),
            "units_fitted": int(len(fitted)),
            "units_dead_lettered": int(fanout.get("units_failed", 0)),
            "failed_unit_share": (units_in_input - len(fitted)) / units_in_input if units_in_input else 1.0,
            "degenerate_by_reason": {str(k): int(v) for k, v in degenerate["reason"].value_counts().sort_index().items()},
            "labels": int(outputs["labels"].sum()),
            "train_labels": int(outputs["train_labels"].sum()),
            "holdout_labels": holdout_labels,
            "positive_share": positive_shares(outputs),
            "log_loss": float((held["holdout_log_loss"] * held["holdout_labels"]).sum() / holdout_labels)
            if holdout_labels else None,
            **quantiles(fitted["holdout_auc"], "auc"),
        }

    def compare(self, metrics: dict[str, Any], input_stats: dict[str, Any],
                previous: VersionRecord | None) -> dict[str, Any]:
        if previous is None:
            return {"previous_version": None}
        before = previous["metrics"]

        def difference(name: str) -> float | None:
            return None if metrics.get(name) is None or before.get(name) is None else metrics[name] - before[name]

        rise = difference("auc_p50")
        return {
            "previous_version": previous["version"],
            "auc_p50_drop": None if rise is None else 0.0 - rise,
            "log_loss_increase": difference("log_loss"),
            "label_shift": label_shift(metrics["positive_share"], before.get("positive_share") or {}),
            "labels_change": relative_change(metrics["labels"], before.get("labels")),
            "units_change": relative_change(metrics["units_in_input"], before.get("units_in_input")),
            "previous_positive_share": before.get("positive_share"),
        }

    def report_sections(self, outputs: "pd.DataFrame", metrics: dict[str, Any],
                        comparison: dict[str, Any]) -> list[ReportSection]:
        from operators.kit import figure_png, rows_table

        before = comparison.get("previous_positive_share") or {}
        balance = rows_table(["labels", "damaged share", "last approved version"],
                             [[k, v, before.get(k)] for k, v in metrics["positive_share"].items()])
        by_type = outputs.assign(fitted=outputs["status"] == "ok").groupby("package_type").agg(
            units=("labels", "size"), fitted=("fitted", "sum"), labels=("labels", "sum"),
            auc_p50=("holdout_auc", "median"), log_loss_p50=("holdout_log_loss", "median"))
        per_type = rows_table(["package type", "units", "fitted", "labels", "median AUC", "median log-loss"],
                              [[k, *row] for k, row in zip(by_type.index, by_type.itertuples(index=False))])

        def auc(ax):
            values = outputs["holdout_auc"].dropna()
            ax.hist(values, bins=30, color="#4c72b0")
            ax.set(title="Holdout AUC per unit", xlabel="AUC", ylabel="units")

        return [ReportSection("Models by package type", figures={"holdout_auc": figure_png(auc)},
                              html=per_type + "<h3>Units without a model, by reason</h3>"
                              + rows_table(["reason", "units"], list(metrics["degenerate_by_reason"].items()))),
                ReportSection("Label balance", html=balance)]

    def summary_lines(self, metrics: dict[str, Any], comparison: dict[str, Any]) -> list[str]:
        lines = [
            f"{number(metrics.get('units_fitted'))} of {number(metrics.get('units_in_input'))} units fitted "
            f"(failed share {number(metrics.get('failed_unit_share'))}) on {number(metrics.get('labels'))} labels, "
            f"damaged share {number((metrics.get('positive_share') or {}).get('all'))}",
            f"median holdout AUC {number(metrics.get('auc_p50'))} (p10 {number(metrics.get('auc_p10'))}, "
            f"p90 {number(metrics.get('auc_p90'))}), holdout log-loss {number(metrics.get('log_loss'))}",
        ]
        if comparison.get("previous_version"):
            lines.append(f"against version {comparison['previous_version']}: AUC drop "
                         f"{number(comparison.get('auc_p50_drop'), '{:+.3g}')}, log-loss increase "
                         f"{number(comparison.get('log_loss_increase'), '{:+.3g}')}, label shift "
                         f"{number(comparison.get('label_shift'))}, labels change "
                         f"{number(comparison.get('labels_change'), '{:.1%}')}, units change "
                         f"{number(comparison.get('units_change'), '{:.1%}')}")
        else:
            lines.append("no approved version before this one: nothing to compare with")
        return lines
