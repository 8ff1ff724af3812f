"""The generic evaluator contract (operators.kit.evaluation): limits and proposals, one run's evaluation and
registration, the kit's dead-letter limit, and a kit that knows no pipeline's metrics.

The evaluator here is a tiny non-pricing one (the mean of a column, and its change against the
last approved version), so nothing in operators/kit may assume pricing's metrics.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from operators.kit import Evaluator, Limit, ReportSection, evaluation, registry


class MeanScore(Evaluator):
    name = "mean_score"
    limits = (
        Limit("score_mean", "max", approve=1.0, reject=2.0, description="mean score of the units"),
        Limit("units_share", "min", approve=0.9, reject=0.5, description="scored units / units in the input"),
        Limit("score_mean_increase", "max", approve=0.5, reject=None,
              description="mean score minus the last approved version's"),
    )

    def metrics(self, outputs, prepared, fanout):
        return {"score_mean": float(outputs["score"].mean()), "units_share": len(outputs) / prepared["units"]}

    def compare(self, metrics, input_stats, previous):
        if previous is None:
            return {"previous_version": None}
        return {"previous_version": previous["version"],
                "score_mean_increase": metrics["score_mean"] - previous["metrics"]["score_mean"]}

    def report_sections(self, outputs, metrics, comparison):
        from operators.kit.report import figure_png, table

        return [ReportSection("Scores by <group>", html=table(outputs.groupby("group")["score"].mean().to_dict()),
                              figures={"score_histogram": figure_png(lambda ax: ax.hist(outputs["score"]))})]


GOOD = {"score_mean": 0.5, "units_share": 1.0, "score_mean_increase": 0.0}


@pytest.mark.parametrize("values, proposal, first_reason", [
    (GOOD, "approve", "every approve limit met"),
    ({**GOOD, "score_mean": 1.0}, "approve", "every approve limit met"),  # at the level is within it
    ({**GOOD, "score_mean": 1.23456789}, "review", "score_mean 1.23 > approve limit 1"),
    ({**GOOD, "score_mean": 2.0}, "review", "score_mean 2 > approve limit 1"),
    ({**GOOD, "score_mean": 2.5}, "reject", "score_mean 2.5 > reject limit 2"),
    ({**GOOD, "units_share": 0.7}, "review", "units_share 0.7 < approve limit 0.9"),
    ({**GOOD, "units_share": 0.4}, "reject", "units_share 0.4 < reject limit 0.5"),
    ({**GOOD, "score_mean_increase": 9.0}, "review", "score_mean_increase 9 > approve limit 0.5"),
])
def test_propose_applies_each_limit_in_its_direction(values, proposal, first_reason):
    decision, reasons = evaluation.propose(values, MeanScore.limits, {})
    assert (decision, reasons[0]) == (proposal, first_reason)


def test_a_reject_level_wins_over_an_approve_level_and_every_broken_limit_is_a_reason():
    decision, reasons = evaluation.propose({**GOOD, "score_mean": 3.0, "units_share": 0.1}, MeanScore.limits)
    assert decision == "reject"
    assert reasons == ["score_mean 3 > reject limit 2", "units_share 0.1 < reject limit 0.5"]


def test_overrides_replace_the_default_levels_and_null_leaves_a_level_unchecked():
    assert evaluation.propose({**GOOD, "score_mean": 1.5}, MeanScore.limits, {"approve": {"score_mean": 1.6}})[0] \
        == "approve"
    assert evaluation.propose({**GOOD, "score_mean": 1.5}, MeanScore.limits, {"reject": {"score_mean": 1.4}})[0] \
        == "reject"
    assert evaluation.propose({**GOOD, "score_mean": 5.0}, MeanScore.limits,
                              {"approve": {"score_mean": None}, "reject": {"score_mean": None}})[0] == "approve"
    params = {"approve_score_mean": 3.0, "reject_units_share": None, "review": "auto"}
    assert evaluation.overrides_from_params(MeanScore.limits, params) == {
        "approve": {"score_mean": 3.0}, "reject": {"units_share": None}}


@pytest.mark.parametrize("overrides, message", [
    ({"approve": {"score_max": 1}}, "approve_score_max: no limit 'score_max'; the limits are score_mean, "
                                    "score_mean_increase, units_share"),
    ({"reject": {"score_mean": "high"}}, "reject_score_mean must be a number, or null to leave it unchecked"),
    ({"reject": {"score_mean": float("nan")}}, "reject_score_mean must be a number"),
    ({"maybe": {}}, "unknown set 'maybe'"),
])
def test_bad_overrides_name_the_param(overrides, message):
    with pytest.raises(ValueError) as err:
        evaluation.propose(GOOD, MeanScore.limits, overrides)
    assert message in str(err.value)


def test_a_missing_value_is_not_checked_and_the_reasons_say_so():
    values = {"score_mean": 0.5, "units_share": float("nan")}  # no previous version: no increase
    decision, reasons = evaluation.propose(values, MeanScore.limits)
    assert decision == "approve"
    assert reasons == ["every approve limit met", "units_share not checked: no value",
                       "score_mean_increase not checked: no value"]
    decision, reasons = evaluation.propose({"score_mean": 1.5}, MeanScore.limits)
    assert decision == "review" and "units_share not checked: no value" in reasons
    rows = {row["name"]: row for row in evaluation.limit_table({"score_mean": 1.5}, MeanScore.limits)}
    assert rows["score_mean"]["outcome"] == "review" and rows["units_share"]["outcome"] == "not checked"


def test_a_limit_needs_a_direction_and_a_description():
    with pytest.raises(ValueError, match="direction must be 'max' or 'min'"):
        Limit("x", "below", approve=1, reject=2, description="d")
    with pytest.raises(ValueError, match="needs a description"):
        Limit("x", "max", approve=1, reject=2, description="")


def test_the_default_summary_line_rounds_and_says_n_a():
    class Bare(Evaluator):
        name = "bare"
        limits = MeanScore.limits

    [line] = Bare().summary_lines({"score_mean": 0.14268376189738521, "units_share": 1}, {})
    assert line == "metrics: score_mean 0.143, units_share 1, score_mean_increase n/a"
    assert evaluation.number(None) == evaluation.number(float("nan")) == "n/a"
    assert evaluation.number(94031) == "94,031" and evaluation.number(100000.0) == "100,000"
    assert evaluation.number(0.142683761) == "0.143"


def write_run(folder: Path, scores: list[float], name: str) -> dict:
    """A run's outputs as the engine leaves them: one result file per batch and a shard results file."""
    from batch_worker.runtime import parquet_bytes

    batches = []
    for batch_id, chunk in enumerate((scores[:2], scores[2:])):
        out = folder / name / f"batch{batch_id}" / "result.parquet"
        out.parent.mkdir(parents=True)
        frame = pd.DataFrame({"unit": [f"u{batch_id}{i}" for i in range(len(chunk))], "score": chunk,
                              "group": ["ab"[i % 2] for i in range(len(chunk))]})
        out.write_bytes(parquet_bytes(frame))
        batches.append({"batch_id": batch_id, "output": str(out)})
    results = folder / name / "results" / "shard-0.json"
    results.parent.mkdir(parents=True)
    results.write_text(json.dumps({"batches": batches, "failed": []}))
    return {"results": [str(results)], "units_failed": 0}


def run_evaluation(root: Path, scores: list[float], name: str, *, units_failed: int = 0, **kwargs) -> dict:
    """`scores` are the units computed; `units_failed` more units of the input were dead-lettered."""
    units = len(scores) + units_failed
    prepared = {"units": units, "rows_ok": units, "rows_in": units, "rows_quarantined": 0,
                "window": ["2026-01-19", "2026-02-16"]}
    lineage = {"run_id": name, "input_uri": "<script>alert(1)</script>"}
    args = dict(overrides={}, review_always=False)
    args.update(kwargs)
    fanout = {**write_run(root / "runs", scores, name), "units": units, "units_failed": units_failed}
    return evaluation.evaluate_run(MeanScore(), model="scores", fanout=fanout,
                                   prepared=prepared, lineage=lineage, version=f"2026-02-16_{name}",
                                   root=str(root), aws_conn_id=None, **args)


def test_evaluate_run_registers_the_version_with_its_outputs_report_and_lines(tmp_path):
    first = run_evaluation(tmp_path, [0.2, 0.4, 0.6, 0.8], "r1")
    assert first["proposal"] == "approve" and first["version"] == "2026-02-16_r1"
    assert first["metrics"] == {"score_mean": pytest.approx(0.5), "units_share": 1.0, "units_dead_lettered": 0,
                                "dead_letter_share": 0.0}  # the kit's dead-letter values, for every evaluator
    assert first["reasons"] == ["every approve limit met", "score_mean_increase not checked: no value"]
    assert first["lines"] == ["metrics: score_mean 0.5, units_share 1, score_mean_increase n/a"]
    json.dumps(first)  # what goes to XCom
    models = registry.Registry(str(tmp_path), "scores", aws_conn_id=None)
    record = models.get(first["version"])
    assert record["status"] == registry.PENDING and record["artifact"] == "outputs.parquet"
    assert [(row["name"], row["outcome"]) for row in record["limits"]] == [
        ("score_mean", "approve"), ("units_share", "approve"), ("score_mean_increase", "not checked"),
        ("dead_letter_share", "approve")]
    stored = pd.read_parquet(first["artifact"])
    assert Path(first["artifact"]).parent == Path(models.version_dir(first["version"]))
    assert sorted(stored["score"]) == [0.2, 0.4, 0.6, 0.8]
    page = Path(first["report"]).read_text()
    assert "Scores by &lt;group&gt;" in page and page.count("data:image/png;base64,") == 1
    assert "mean score of the units" in page and "&lt;script&gt;" in page and "<script>" not in page
    assert "Evaluation of scores, window 2026-01-19 to 2026-02-16" in page

    models.decide(first["version"], registry.APPROVED, by="thresholds")
    second = run_evaluation(tmp_path, [1.23456789] * 4, "r2")
    assert second["comparison"]["previous_version"] == first["version"]
    assert second["proposal"] == "review"
    assert second["reasons"] == ["score_mean 1.23 > approve limit 1", "score_mean_increase 0.735 > approve limit 0.5"]

    always = run_evaluation(tmp_path, [0.5] * 4, "r3", review_always=True)
    assert always["proposal"] == "review" and always["reasons"][-1] == "review: always (run parameter)"


def test_every_evaluator_gets_the_dead_letter_limit_unless_it_declares_its_own():
    assert [limit.name for limit in MeanScore.checked_limits()] == [
        "score_mean", "units_share", "score_mean_increase", "dead_letter_share"]
    assert MeanScore.checked_limits()[-1] is evaluation.DEAD_LETTER_LIMIT
    assert (evaluation.DEAD_LETTER_LIMIT.approve, evaluation.DEAD_LETTER_LIMIT.reject) == (0.0, None)

    class Strict(MeanScore):
        limits = (*MeanScore.limits, Limit("dead_letter_share", "max", approve=0.01, reject=0.05, description="own"))

    assert [limit.approve for limit in Strict.checked_limits() if limit.name == "dead_letter_share"] == [0.01]
    assert evaluation.dead_letter_values({"units": 300}, {"units": 300, "units_failed": 6}) == {
        "units_dead_lettered": 6, "dead_letter_share": 0.02}
    assert evaluation.dead_letter_values({"units": 0}, {"units_failed": 0})["dead_letter_share"] == 0.0


def test_a_run_with_dead_letters_is_not_approved_automatically_unless_the_param_allows_their_share(tmp_path):
    """6 of 300 units dead-lettered, every other metric within its approve level: review, not approve."""
    scores = [0.5] * 294
    held = run_evaluation(tmp_path, scores, "r1", units_failed=6)
    assert held["proposal"] == "review"
    assert held["reasons"] == ["dead_letter_share 0.02 > approve limit 0", "score_mean_increase not checked: no value"]
    assert held["metrics"]["units_dead_lettered"] == 6 and held["metrics"]["dead_letter_share"] == pytest.approx(0.02)
    rows = {row["name"]: row for row in held["limits"]}
    assert rows["dead_letter_share"]["outcome"] == "review"
    record = registry.Registry(str(tmp_path), "scores", aws_conn_id=None).get(held["version"])
    assert record["metrics"]["units_dead_lettered"] == 6
    # the run allows up to 5% dead letters: approved by thresholds
    allowed = run_evaluation(tmp_path, scores, "r2", units_failed=6,
                             overrides={"approve": {"dead_letter_share": 0.05}})
    assert allowed["proposal"] == "approve"
    # above a reject level the version is rejected
    rejected = run_evaluation(tmp_path, scores, "r3", units_failed=6, overrides={"reject": {"dead_letter_share": 0.01}})
    assert rejected["proposal"] == "reject" and rejected["reasons"][0] == "dead_letter_share 0.02 > reject limit 0.01"
    # a run without dead letters is not held by the limit
    assert run_evaluation(tmp_path, scores, "r4")["proposal"] == "approve"


def test_a_backfilled_interval_is_compared_with_the_version_approved_for_the_interval_before_it(tmp_path):
    models = registry.Registry(str(tmp_path), "scores", aws_conn_id=None)
    first = run_evaluation(tmp_path, [0.5] * 4, "w12", interval=("2026-01-12T00:00:00+00:00",
                                                                 "2026-01-19T00:00:00+00:00"))
    models.decide(first["version"], registry.APPROVED, by="thresholds")
    newest = run_evaluation(tmp_path, [0.9] * 4, "w26", interval=("2026-01-26T00:00:00+00:00",
                                                                  "2026-02-02T00:00:00+00:00"))
    models.decide(newest["version"], registry.APPROVED, by="thresholds")
    backfill = run_evaluation(tmp_path, [0.6] * 4, "w19", interval=("2026-01-19T00:00:00+00:00",
                                                                    "2026-01-26T00:00:00+00:00"))
    assert backfill["comparison"]["previous_version"] == first["version"]  # not the newest version
    assert backfill["comparison"]["score_mean_increase"] == pytest.approx(0.1)
    assert models.get(backfill["version"])["interval_end"] == "2026-01-26T00:00:00+00:00"
    decided = models.decide(backfill["version"], registry.APPROVED, by="thresholds")
    assert decided["current"] is False and models.current()["version"] == newest["version"]


def test_evaluate_run_refuses_a_bad_override_before_it_registers_anything(tmp_path):
    with pytest.raises(ValueError, match="approve_nope"):
        run_evaluation(tmp_path, [0.5] * 4, "r1", overrides={"approve": {"nope": 1}})
    assert registry.Registry(str(tmp_path), "scores", aws_conn_id=None).versions() == []


def test_evaluate_run_with_no_output_says_so_and_registers_nothing(tmp_path):
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"batches": [{"batch_id": 0, "output": None}], "failed": []}))
    fanout = {"results": [str(results)], "failed": 1, "units_failed": 4, "dead_letter": "/x/dead_letter.parquet"}
    with pytest.raises(ValueError, match=r"no batch of this run left an output .*1 batches failed, 4 units"):
        evaluation.evaluate_run(MeanScore(), model="scores", fanout=fanout, prepared={"units": 4}, overrides={},
                                review_always=False, lineage={}, version="v1", root=str(tmp_path), aws_conn_id=None)
    assert registry.Registry(str(tmp_path), "scores", aws_conn_id=None).versions() == []


def test_nothing_pricing_specific_stays_in_the_kit():
    kit = Path(__file__).resolve().parents[3] / "operators" / "kit"
    pricing_words = re.compile(r"\bprices?\b|pricing|mape|uplift|elasticit", re.IGNORECASE)
    found = [(p.name, m.group()) for p in kit.glob("*.py") for m in pricing_words.finditer(p.read_text())]
    assert found == []


def test_evaluator_modules_import_nothing_heavy():
    probe = ("import sys, json\n"
             "from operators.kit import evaluation, report\n"
             "from operators.pipelines.pricing.evaluation import PricingEvaluator\n"
             "assert [l.name for l in PricingEvaluator.limits]\n"
             "print(json.dumps(sorted(sys.modules)))\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parents[3])
    assert out.returncode == 0, out.stderr[-2000:]
    loaded = {name.split(".")[0] for name in json.loads(out.stdout.splitlines()[-1])}
    assert not loaded & {"pandas", "numpy", "pyarrow", "duckdb", "matplotlib", "s3fs"}
