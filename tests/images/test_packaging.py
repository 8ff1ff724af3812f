"""The packaging workload: registration, a fit that recovers a known signal, the time-based holdout, degenerate units."""
from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from batch_worker.workloads import BadData, get_workload
from batch_worker.workloads.packaging import FEATURES, OUTPUT, PackagingWorkload

START = dt.date(2026, 1, 5)
TRUE_INTERCEPT = -1.0
TRUE_COEF = {"weight_kg": 0.8, "longest_side_cm": 0.0, "fragility": 3.0, "liquid": -1.5}


def unit_labels(package_type="bag", product_group="G0001", *, n=4000, days=120, seed=0, damaged=None,
                intercept=TRUE_INTERCEPT, coef=TRUE_COEF) -> pd.DataFrame:
    """Labels of one unit drawn from a known logistic model over `days` days (or all `damaged` when given)."""
    rng = np.random.default_rng(seed)
    features = pd.DataFrame({"weight_kg": rng.uniform(0.1, 5.0, n), "longest_side_cm": rng.uniform(5, 80, n),
                             "fragility": rng.uniform(0, 1, n), "liquid": (rng.random(n) < 0.3).astype(float)})
    logit = intercept + sum(features[f].to_numpy() * coef[f] for f in FEATURES)
    label = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int) if damaged is None else np.full(n, damaged)
    return pd.DataFrame({
        "package_type": package_type, "product_group": product_group,
        "product_id": [f"{product_group}-P{i:05d}" for i in range(n)],
        "label_id": [f"{package_type}-{product_group}-{i}" for i in range(n)],
        "labelled_on": [START + dt.timedelta(days=int(d)) for d in rng.integers(0, days, n)],
        **features, "damaged": label,
    })


@pytest.fixture(scope="module")
def workload() -> PackagingWorkload:
    return get_workload("packaging")


def test_registered_with_schema_parameters_and_output(workload):
    assert isinstance(workload, PackagingWorkload)
    assert workload.schema.unit_key == ("package_type", "product_group")
    assert workload.schema.time_column == "labelled_on" and workload.schema.unique_key == ("label_id",)
    assert all(p.description for p in workload.parameters)
    assert workload.output.names[:2] == ("package_type", "product_group")
    assert {f"coef_{f}" for f in FEATURES} <= set(workload.output.names)


def test_the_fit_recovers_a_known_signal(workload):
    result = workload.run(unit_labels(n=20_000, days=200), {"l2": 0.01}).iloc[0]
    assert result["status"] == "ok" and pd.isna(result["reason"])
    assert result["intercept"] == pytest.approx(TRUE_INTERCEPT, abs=0.25)
    for feature, value in TRUE_COEF.items():
        assert result[f"coef_{feature}"] == pytest.approx(value, abs=0.25), feature
    assert result["holdout_auc"] > 0.75
    assert 0 < result["holdout_log_loss"] < np.log(2)  # better than a coin
    assert result["labels"] == 20_000 == result["train_labels"] + result["holdout_labels"]
    assert result["positive_share"] == pytest.approx(result["positives"] / result["labels"])


def test_separable_data_gives_an_auc_near_one_and_finite_coefficients(workload):
    labels = unit_labels(n=2000)
    labels["damaged"] = (labels["fragility"] > 0.5).astype(int)
    result = workload.run(labels, {}).iloc[0]
    assert result["status"] == "ok" and result["holdout_auc"] > 0.99
    assert np.isfinite(result[[f"coef_{f}" for f in FEATURES]].astype(float)).all()
    assert result["coef_fragility"] > 0


def test_the_penalty_shrinks_the_coefficients(workload):
    labels = unit_labels(n=3000)
    loose = workload.run(labels, {"l2": 0.01}).iloc[0]
    tight = workload.run(labels, {"l2": 10_000.0}).iloc[0]
    assert abs(tight["coef_fragility"]) < abs(loose["coef_fragility"]) / 5


def test_the_holdout_is_each_units_latest_days(workload):
    early = unit_labels("box", "G0002", n=500, days=60, seed=1)
    late = unit_labels("box", "G0003", n=500, days=90, seed=2)
    result = workload.run(pd.concat([early, late]), {"holdout_days": 10}).set_index("product_group")
    for group, frame in (("G0002", early), ("G0003", late)):
        cut = frame["labelled_on"].max() - dt.timedelta(days=10)
        assert result.loc[group, "holdout_labels"] == (frame["labelled_on"] > cut).sum()


def test_max_label_age_leaves_old_labels_out_of_training(workload):
    labels = unit_labels(n=1000, days=100)
    result = workload.run(labels, {"holdout_days": 10, "max_label_age_days": 40}).iloc[0]
    latest = labels["labelled_on"].max()
    ages = (latest - labels["labelled_on"]).map(lambda d: d.days)
    assert result["train_labels"] == ((ages >= 10) & (ages < 40)).sum()
    assert result["labels"] == 1000


def test_a_unit_does_not_depend_on_the_other_units_of_its_batch(workload):
    alone = workload.run(unit_labels(seed=5, n=800), {})
    together = workload.run(pd.concat([unit_labels("mailer", "G0009", seed=6, n=300), unit_labels(seed=5, n=800)]),
                            {}).query("package_type == 'bag'").reset_index(drop=True)
    pd.testing.assert_frame_equal(alone, together, check_exact=False, rtol=1e-9)


def test_degenerate_units_are_reported_not_crashed(workload):
    batch = pd.concat([
        unit_labels("bag", "G0001", n=400, damaged=0),            # never damaged
        unit_labels("bag", "G0002", n=400, damaged=1),            # always damaged
        unit_labels("box", "G0003", n=10),                        # too few labels to fit
        unit_labels("mailer", "G0004", n=400),                    # fine
    ])
    result = workload.run(batch, {"min_train_labels": 30}).set_index("product_group")
    assert result.loc["G0001", "reason"] == "one_class" and result.loc["G0001", "positive_share"] == 0
    assert result.loc["G0002", "reason"] == "one_class" and result.loc["G0002", "positive_share"] == 1
    assert result.loc["G0003", "reason"] == "too_few_labels" and result.loc["G0003", "labels"] == 10
    assert (result.loc[["G0001", "G0002", "G0003"], "status"] == "degenerate").all()
    assert result.loc[["G0001", "G0002", "G0003"], ["intercept", "coef_fragility", "holdout_auc"]].isna().all().all()
    assert result.loc["G0004", "status"] == "ok"
    OUTPUT.enforce(result.reset_index(), "test")  # degenerate rows keep the declared schema


def test_a_one_class_holdout_has_a_log_loss_but_no_auc(workload):
    labels = unit_labels(n=2000, days=100)
    latest = labels["labelled_on"].max()
    labels.loc[labels["labelled_on"] > latest - dt.timedelta(days=28), "damaged"] = 0
    result = workload.run(labels, {}).iloc[0]
    assert result["status"] == "ok" and pd.isna(result["holdout_auc"]) and result["holdout_log_loss"] > 0


def test_a_unit_still_moving_after_max_iterations_is_not_converged(workload):
    result = workload.run(unit_labels(n=2000), {"max_iterations": 1, "tolerance": 1e-12}).iloc[0]
    assert result["reason"] == "not_converged" and result["iterations"] == 1 and pd.isna(result["intercept"])


def test_the_output_follows_the_declared_schema_through_parquet(workload):
    import pyarrow as pa

    result = workload.run(pd.concat([unit_labels(n=300), unit_labels("box", "G0002", n=300, damaged=0)]), {})
    checked = OUTPUT.enforce(result, "test")
    assert list(checked.columns) == list(OUTPUT.names)
    assert pa.Table.from_pandas(checked, schema=OUTPUT.arrow_schema(), preserve_index=False).num_rows == 2


@pytest.mark.parametrize("params, words", [
    ({"max_label_age_days": 20, "holdout_days": 28}, ["max_label_age_days (20)", "holdout_days (28)"]),
    ({"l2": 0}, ["l2 must be > 0"]),
    ({"holdout_days": 0}, ["holdout_days must be >= 1"]),
    ({"l1": 1.0}, ["unknown parameter(s) ['l1']"]),
])
def test_bad_parameters_are_refused_naming_the_fields(workload, params, words):
    with pytest.raises(ValueError) as err:
        workload.resolve_params(params)
    assert all(word in str(err.value) for word in words)


def test_a_label_other_than_0_or_1_is_bad_data(workload):
    labels = unit_labels(n=50)
    labels.loc[3, "damaged"] = 2
    with pytest.raises(BadData, match="'damaged' must be 0 or 1"):
        workload.run(labels, {})
    with pytest.raises(BadData, match="lacks column"):
        workload.run(labels.drop(columns=["fragility"]), {})
