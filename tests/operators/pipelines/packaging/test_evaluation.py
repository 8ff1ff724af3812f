"""Packaging's evaluator: metrics over all units, deltas against the last approved version, the limits' proposals."""
from __future__ import annotations

import pandas as pd
import pytest

from operators.kit.evaluation import propose
from operators.kit.report import render
from operators.pipelines.packaging.evaluation import LIMITS, PackagingEvaluator, label_shift


def outputs(auc=0.8, log_loss=0.3, degenerate=0, bag_positives=40, box_positives=5) -> pd.DataFrame:
    fitted = pd.DataFrame({
        "package_type": ["bag", "bag", "box", "box"], "product_group": ["G1", "G2", "G1", "G2"],
        "labels": 100, "train_labels": 80, "holdout_labels": 20,
        "positives": [bag_positives, bag_positives, box_positives, box_positives],
        "holdout_log_loss": log_loss, "holdout_auc": auc, "status": "ok", "reason": None})
    bad = pd.DataFrame({"package_type": "box", "product_group": [f"G{9 + i}" for i in range(degenerate)],
                        "labels": 10, "train_labels": 8, "holdout_labels": 2, "positives": 0,
                        "holdout_log_loss": float("nan"), "holdout_auc": float("nan"), "status": "degenerate",
                        "reason": "one_class"})
    return pd.concat([fitted, bad], ignore_index=True)


def evaluated(frame, units, previous=None, units_failed=0):
    evaluator = PackagingEvaluator()
    metrics = evaluator.metrics(frame, {"units": units}, {"units_failed": units_failed})
    record = None if previous is None else {"version": "v1", "metrics": previous}
    return metrics, evaluator.compare(metrics, {}, record)


def test_metrics_cover_every_unit_of_the_input():
    metrics, _ = evaluated(outputs(degenerate=1), units=6, units_failed=1)
    assert metrics["units_fitted"] == 4 and metrics["units_scored"] == 5 and metrics["units_dead_lettered"] == 1
    assert metrics["failed_unit_share"] == pytest.approx(2 / 6)  # one degenerate, one dead-lettered
    assert metrics["labels"] == 410 and metrics["holdout_labels"] == 80
    assert metrics["positive_share"] == pytest.approx({"all": 90 / 410, "bag": 0.4, "box": 10 / 210})
    assert metrics["auc_p50"] == pytest.approx(0.8) and metrics["log_loss"] == pytest.approx(0.3)
    assert metrics["degenerate_by_reason"] == {"one_class": 1}


def test_the_first_version_is_judged_on_its_own_metrics():
    metrics, comparison = evaluated(outputs(), units=4)
    assert comparison == {"previous_version": None}
    proposal, reasons = propose({**metrics, **comparison}, LIMITS)
    assert proposal == "approve"
    assert "auc_p50_drop not checked: no value" in reasons and "label_shift not checked: no value" in reasons


def test_deltas_against_the_last_approved_version():
    before, _ = evaluated(outputs(), units=4)
    metrics, comparison = evaluated(outputs(auc=0.75, log_loss=0.34, bag_positives=50), units=5, previous=before)
    assert comparison["previous_version"] == "v1"
    assert comparison["auc_p50_drop"] == pytest.approx(0.05)
    assert comparison["log_loss_increase"] == pytest.approx(0.04)
    assert comparison["label_shift"] == pytest.approx(0.1)  # bag's damaged share 0.4 -> 0.5
    assert comparison["units_change"] == pytest.approx(0.25)
    assert comparison["labels_change"] == pytest.approx(0.0)


def test_label_shift_takes_the_largest_change_of_a_share_in_both():
    assert label_shift({"all": 0.2, "bag": 0.3, "box": 0.1}, {"all": 0.21, "bag": 0.25, "mailer": 0.9}) == \
        pytest.approx(0.05)
    assert label_shift({"all": None}, {}) is None


@pytest.mark.parametrize("changed, expected, named", [
    ({}, "approve", None),
    ({"bag_positives": 44}, "review", "label_shift"),           # shares move by 0.04: between the levels
    ({"bag_positives": 60}, "reject", "label_shift"),           # by 0.2: beyond the reject level
    ({"log_loss": 0.35}, "review", "log_loss_increase"),
    ({"auc": 0.6}, "reject", "auc_p50_drop"),
])
def test_the_limits_approve_ask_or_reject(changed, expected, named):
    before, _ = evaluated(outputs(), units=4)
    metrics, comparison = evaluated(outputs(**changed), units=4, previous=before)
    proposal, reasons = propose({**metrics, **comparison}, LIMITS)
    assert proposal == expected
    if named:
        assert any(reason.startswith(named) for reason in reasons), reasons


def test_many_units_without_a_model_reject_the_version():
    metrics, comparison = evaluated(outputs(degenerate=6), units=10)
    proposal, reasons = propose({**metrics, **comparison}, LIMITS)
    assert proposal == "reject" and reasons[0].startswith("failed_unit_share 0.6 > reject limit 0.5")


def test_summary_lines_and_report_sections():
    before, _ = evaluated(outputs(), units=4)
    evaluator = PackagingEvaluator()
    metrics, comparison = evaluated(outputs(bag_positives=44, degenerate=1), units=5, previous=before)
    lines = evaluator.summary_lines(metrics, comparison)
    assert lines[0] == "4 of 5 units fitted (failed share 0.2) on 410 labels, damaged share 0.239"
    assert lines[1].startswith("median holdout AUC 0.8 ") and "against version v1" in lines[2]
    assert "AUC drop +0, log-loss increase +0, label shift 0.04," in lines[2] and "units change 25.0%" in lines[2]
    sections = evaluator.report_sections(outputs(bag_positives=44, degenerate=1), metrics, comparison)
    page = render(title="t", version="v2", proposal="review", reasons=[], limits=[], values={}, sections=sections,
                  lineage={})
    assert page.count("data:image/png;base64,") == 1 and "one_class" in page and "Label balance" in page
    first = evaluator.summary_lines(*evaluated(outputs(), units=4))
    assert first[-1] == "no approved version before this one: nothing to compare with"


def test_without_any_holdout_auc_the_auc_limit_is_not_checked_and_says_so():
    metrics, comparison = evaluated(outputs(auc=float("nan")), units=4)
    assert metrics["auc_p10"] is metrics["auc_p50"] is metrics["auc_p90"] is None
    proposal, reasons = propose({**metrics, **comparison}, LIMITS)
    assert proposal == "approve" and "auc_p50 not checked: no value" in reasons
