"""The sweep's outcome (operators.pipelines.sweep.outcome): a repeated configuration gets the outcome of the one it
repeats, and the summary log shows the leaderboard and the failures as tables."""
from __future__ import annotations

import json

import pandas as pd

from operators.pipelines.sweep import outcome


def test_a_repeated_configuration_gets_the_outcome_of_the_one_it_repeats():
    configurations = pd.DataFrame({"config_id": ["a", "b", "a-again"], "duplicate_of": ["", "", "a"]})
    configurations["duplicate_of"] = configurations["duplicate_of"].replace("", None)
    rows = [{"config_id": c, "status": "trained", "failure_class": None, "error": None, "job_id": f"job-{c}",
             "score": score, "holdout_auc": 0.7, "units_fitted": 3, "batch_id": 0, "attempts": 1}
            for c, score in (("a", 0.25), ("b", 0.5), ("a-again", None))]
    rows[2].update(status="not_run", job_id=None, units_fitted=None, attempts=0)
    assert outcome.copy_duplicates(rows, configurations) == {"a-again": "a"}
    assert rows[2] == {**rows[0], "config_id": "a-again", "status": "duplicate", "attempts": 0}
    summary = {"duplicates": 1, "duplicates_shown": {"a-again": "a"}}
    assert outcome._duplicates_line(summary).startswith("1 configuration(s) repeat an earlier configuration's "
                                                        "hyper-parameters: trained once")


def test_the_summary_log_shows_the_leaderboard_and_failures_as_tables_not_a_dict():
    hyper = [{"l2": l2, "holdout_days": 28, "tolerance": 1e-6} for l2 in (0.1, 10.0)]
    shown = outcome.shown_parameters([json.dumps(h) for h in hyper])
    assert shown == ["l2"]  # holdout_days and tolerance are at the trainer's defaults in every configuration
    summary = {"dag_id": "training_sweep", "run_id": "manual__x", "configurations": 3,
               "counts": {"trained": 2, "failed": 1}, "duplicates": 0, "duplicates_shown": {},
               "leaderboard": [{"config_id": f"c{n}", "score": score, "holdout_auc": 0.71234, "hyperparameters": h,
                                "settings": outcome.settings_text(h, shown)}
                               for n, (score, h) in enumerate(zip((0.2512345678, 0.3), hyper))],
               "failures_by_class": {"no_fit": {"count": 1, "first_error": "configuration s: no unit could be fitted"}},
               "capacity_shortages": [], "throttled_submits": 0, "report": "/data/runs/x/report.md", "trend": [],
               "history": {},
               "history_sweeps": [{"started": "2026-01-01 00:00:00+00:00", "run_id": "manual__x", "configurations": 3,
                                   "trained": 2, "cached": 0, "failed": 1, "best_config_id": "c0",
                                   "best_score": 0.2512345678}],
               "cost": {"cost": 0.0000026, "currency": "USD", "per_unit": 0.0000009, "vcpu_hours": 0.0004,
                        "gpu_hours": 0.0,
                        "label": "estimate (local endpoint: the same list rates, nothing was charged)"}}
    summary["note"] = outcome.note_text(summary)
    assert summary["note"] == "3 configurations: 1 failed, 2 trained; best c0 (score 0.251235); cost $0.0000026 " \
                              "(estimate)"
    text = outcome.log_text(summary)
    assert "{" not in text  # no dict, no JSON
    lines = text.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("rank"))
    assert lines[header].split() == ["rank", "configuration", "score", "holdout", "AUC", "hyper-parameters"]
    assert lines[header + 2].split() == ["1", "c0", "0.251235", "0.7123", "l2=0.1"]
    assert lines[header + 3].split() == ["2", "c1", "0.3", "0.7123", "l2=10.0"]
    assert any(line.split()[:2] == ["no_fit", "1"] and line.endswith("no unit could be fitted") for line in lines)
    assert "cost $0.0000026" in text and text.endswith("report: /data/runs/x/report.md")
    report = outcome.report_text(summary)
    assert "## Cost" in report and "| manual__x | 3 | 2 | 0 | 1 | c0 | 0.251235 |" in report
