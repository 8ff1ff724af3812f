"""Pricing's evaluator: metrics, deltas, its limits applied by the generic propose, report plots and summary lines."""
from __future__ import annotations

import pandas as pd
import pytest

from operators.kit.evaluation import limit_table, propose
from operators.pipelines.pricing.evaluation import LIMITS, PricingEvaluator


def prices(n_ok=8, n_bad=2, mape=0.2) -> pd.DataFrame:
    ok = pd.DataFrame({"segment": ["a", "b"] * (n_ok // 2), "status": "ok", "reason": None, "holdout_mape": mape,
                       "elasticity": -2.0, "price_change_pct": 5.0, "expected_profit_current": 10.0,
                       "expected_profit_recommended": 11.0, "uplift": 1.0})
    bad = pd.DataFrame({"segment": "a", "status": "degenerate", "reason": ["too_few_points"] * n_bad,
                        "holdout_mape": float("nan"), "elasticity": float("nan"), "price_change_pct": 0.0,
                        "expected_profit_current": float("nan"), "expected_profit_recommended": float("nan"),
                        "uplift": float("nan")})
    return pd.concat([ok, bad], ignore_index=True)


def test_metrics_cover_all_units():
    m = PricingEvaluator().metrics(prices(), {"units": 12}, {"units_failed": 2})
    assert m["units_priced"] == 8 and m["units_scored"] == 10
    assert m["coverage"] == pytest.approx(8 / 12) and m["degenerate_share"] == pytest.approx(0.2)
    assert m["dead_letter_share"] == pytest.approx(2 / 12)
    assert m["uplift_pct"] == pytest.approx(0.1) and m["mape_p50"] == pytest.approx(0.2)
    assert m["degenerate_by_reason"] == {"too_few_points": 2}


def test_the_limits_keep_the_documented_levels():
    assert {limit.name: (limit.direction, limit.approve, limit.reject) for limit in LIMITS} == {
        "mape_p50": ("max", 0.35, 0.6), "coverage": ("min", 0.85, 0.5), "degenerate_share": ("max", 0.15, 0.4),
        "mape_p50_increase": ("max", 0.05, 0.2), "input_shift": ("max", 0.2, None),
        "dead_letter_share": ("max", 0.0, 0.05)}


GOOD = {"mape_p50": 0.2, "coverage": 0.95, "degenerate_share": 0.05, "dead_letter_share": 0.0}


def test_proposals_approve_review_reject():
    assert propose(GOOD, LIMITS)[0] == "approve"
    decision, reasons = propose({**GOOD, "mape_p50": 0.45}, LIMITS)
    assert decision == "review" and reasons[0] == "mape_p50 0.45 > approve limit 0.35"
    decision, reasons = propose({**GOOD, "coverage": 0.3}, LIMITS)
    assert decision == "reject" and "coverage 0.3 < reject limit 0.5" in reasons
    assert propose({**GOOD, "dead_letter_share": 0.01}, LIMITS)[0] == "review"  # any dead letter needs a person
    # the first version has no deltas: judged on its own metrics, and the reasons say what was not checked
    assert propose(GOOD, LIMITS)[1] == ["every approve limit met", "mape_p50_increase not checked: no value",
                                        "input_shift not checked: no value"]


def test_deltas_against_the_last_approved_version_count_too():
    previous = {"version": "v1", "metrics": {**GOOD, "mape_p50": 0.1, "uplift_pct": 0.1, "units_priced": 8},
                "input_stats": {"rows": 100, "units": 10, "mean_log_price": 2.0, "mean_log_quantity": 1.0}}
    current_input = {"rows": 150, "units": 10, "mean_log_price": 2.0, "mean_log_quantity": 1.0}
    deltas = PricingEvaluator().compare(GOOD, current_input, previous)
    assert deltas["previous_version"] == "v1"
    assert deltas["mape_p50_increase"] == pytest.approx(0.1) and deltas["input_shift"] == pytest.approx(0.5)
    decision, reasons = propose({**GOOD, **deltas}, LIMITS)
    assert decision == "review"
    assert reasons == ["mape_p50_increase 0.1 > approve limit 0.05", "input_shift 0.5 > approve limit 0.2"]
    assert PricingEvaluator().compare(GOOD, current_input, None) == {"previous_version": None}


def test_run_params_override_the_levels():
    assert propose({**GOOD, "mape_p50": 0.45}, LIMITS, {"approve": {"mape_p50": 0.5}})[0] == "approve"
    decision, reasons = propose(GOOD, LIMITS, {"reject": {"mape_p50": 0.0001}})
    assert decision == "reject" and reasons[0] == "mape_p50 0.2 > reject limit 0.0001"
    rows = {row["name"]: row for row in limit_table(GOOD, LIMITS, {"approve": {"coverage": None}})}
    assert rows["coverage"]["approve"] is None and rows["coverage"]["reject"] == 0.5


def test_summary_lines_are_rounded_and_say_n_a_for_missing_values():
    evaluator = PricingEvaluator()
    metrics = evaluator.metrics(prices(mape=0.14268376189738521), {"units": 12}, {"units_failed": 0})
    lines = evaluator.summary_lines(metrics, {"previous_version": None})
    assert "median holdout MAPE 0.143 (p10 0.143, p90 0.143)" in lines
    assert lines[0] == "coverage 0.667 (8 of 12 units priced), degenerate share 0.2, dead-letter share 0"
    assert "expected profit uplift 10.0%; prices changed for 100% of priced units, median change +5%" in lines
    assert lines[-1] == "no approved version before this one: nothing to compare with"
    bare = evaluator.summary_lines({"coverage": 0.9}, {"previous_version": "v1", "mape_p50_increase": 0.0123456})
    assert "None" not in "\n".join(bare) and "median holdout MAPE n/a" in bare[1]
    assert bare[-1] == "against version v1: MAPE increase +0.0123, coverage change n/a, input shift n/a"


def test_report_sections_hold_the_three_plots_and_the_degenerate_reasons():
    evaluator = PricingEvaluator()
    frame = prices()
    metrics = evaluator.metrics(frame, {"units": 10}, {})
    [section] = evaluator.report_sections(frame, metrics, {"previous_version": None})
    assert sorted(section.figures) == ["elasticity", "price_change", "uplift_by_segment"]
    assert all(len(png) > 1000 for png in section.figures.values())
    assert "<th>too_few_points</th><td>2</td>" in section.html
