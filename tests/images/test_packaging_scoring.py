"""The packaging_scoring workload: probabilities from a version's models, the recommendation, the artifact's confinement."""
from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from batch_worker.output import checked_output
from batch_worker.runtime import parquet_bytes
from batch_worker.workloads import BadData, get_workload
from batch_worker.workloads.packaging import FEATURES
from batch_worker.workloads.packaging_scoring import (PACKAGE_PREFERENCE, artifact_path, load_models,
                                                      model_location_problems, recommend)

VERSION = "2026-03-02T00_00_00_abcd1234"


def models() -> pd.DataFrame:
    """Group A: every package type safe but the bag; group B: only a box model, unsafe; group C: degenerate."""
    rows = []
    for group, package, intercept in (("A", "own_container", -1.0), ("A", "bag", -6.0), ("A", "mailer", -7.0),
                                      ("A", "box", -8.0), ("B", "box", 0.0), ("C", "bag", np.nan)):
        rows.append({"package_type": package, "product_group": group, "intercept": intercept,
                     "coef_weight_kg": 0.5, "coef_longest_side_cm": 0.01, "coef_fragility": 2.0, "coef_liquid": 1.0,
                     "status": "ok" if not np.isnan(intercept) else "degenerate"})
    return pd.DataFrame(rows)


@pytest.fixture
def published(tmp_path, monkeypatch) -> dict:
    root = tmp_path / "data"
    uri = artifact_path(str(root), VERSION)
    Path(uri).parent.mkdir(parents=True)
    Path(uri).write_bytes(parquet_bytes(models()))
    monkeypatch.setenv("DATA_ROOT", str(root))
    load_models.cache_clear()
    return {"model_version": VERSION, "model_uri": uri}


def products() -> pd.DataFrame:
    return pd.DataFrame({
        "product_id": ["a1", "a2", "b1", "c1", "z1"], "product_group": ["A", "A", "B", "C", "Z"],
        "added_on": [dt.date(2026, 3, 1)] * 5, "weight_kg": [1.0, 2.0, 1.5, 1.0, 1.0],
        "longest_side_cm": [30.0, 40.0, 20.0, 10.0, 10.0], "fragility": [0.1, 0.9, 0.5, 0.5, 0.5],
        "liquid": [0.0, 1.0, 0.0, 0.0, 0.0]})


def test_scores_every_package_type_with_the_versions_models_and_recommends_the_least_packaging(published):
    workload = get_workload("packaging_scoring")
    batch = products()
    out, _ = checked_output(workload, workload.run(batch, published), "test")
    table = models().set_index(["product_group", "package_type"])
    for i, row in out.iterrows():
        for package in PACKAGE_PREFERENCE:
            key = (row["product_group"], package)
            if key in table.index and not np.isnan(table.loc[key, "intercept"]):
                eta = table.loc[key, "intercept"] + sum(table.loc[key, f"coef_{f}"] * batch.loc[i, f] for f in FEATURES)
                assert row[f"p_damage_{package}"] == pytest.approx(1 / (1 + np.exp(-eta)))
            else:
                assert pd.isna(row[f"p_damage_{package}"])
    by_id = out.set_index("product_id")
    # a1: own_container is over 5 %, the bag is within it; a2 (heavier, fragile, liquid): only the box is
    assert by_id.loc["a1", "recommended_package"] == "bag" and by_id.loc["a1", "within_limit"]
    assert by_id.loc["a2", ["p_damage_bag", "p_damage_mailer"]].min() > 0.05
    assert by_id.loc["a2", "recommended_package"] == "box" and by_id.loc["a2", "within_limit"]
    # b1: only an unsafe box model: the safest there is, flagged; c1 (degenerate) and z1 (unknown group): none
    assert by_id.loc["b1", "recommended_package"] == "box" and not by_id.loc["b1", "within_limit"]
    assert by_id.loc[["c1", "z1"], "recommended_package"].isna().all()
    assert not by_id.loc[["c1", "z1"], "within_limit"].any()
    assert set(out["model_version"]) == {VERSION} and list(out["product_id"]) == list(batch["product_id"])
    stricter = workload.run(batch, {**published, "max_damage_probability": 0.001}).set_index("product_id")
    assert stricter.loc["a1", "recommended_package"] == "box"


def test_recommend_takes_the_first_within_the_limit_else_the_safest():
    p = np.array([[0.2, 0.04, 0.01, 0.0], [0.3, 0.2, np.nan, 0.1], [np.nan] * 4])
    choice, within = recommend(p, 0.05)
    assert choice.tolist() == [1, 3, -1] and within.tolist() == [True, False, False]


def test_the_model_artifact_must_be_the_versions_own_under_the_data_root(published, tmp_path):
    root = str(tmp_path / "data")
    assert model_location_problems(published["model_uri"], VERSION, root) == []
    assert model_location_problems(f"s3://bucket/published/packaging/versions/{VERSION}/models.parquet", VERSION,
                                   "s3://bucket") == []
    refused = {
        "outside": (artifact_path(str(tmp_path / "elsewhere"), VERSION), VERSION),
        "other version": (artifact_path(root, "v2"), VERSION),
        "climbing": (f"{root}/published/packaging/versions/{VERSION}/../../../../../etc/published/packaging/"
                     f"versions/{VERSION}/models.parquet", VERSION),
        "bad version": (artifact_path(root, "../x"), "../x"),
        "other scheme": (f"http://host/published/packaging/versions/{VERSION}/models.parquet", VERSION),
        "unset": (None, VERSION),
    }
    for what, (uri, version) in refused.items():
        assert model_location_problems(uri, version, root), what
    workload = get_workload("packaging_scoring")
    with pytest.raises(BadData, match="outside the data root"):
        workload.run(products(), {**published, "model_uri": artifact_path(str(tmp_path / "elsewhere"), VERSION)})
    with pytest.raises(BadData, match="model_version and model_uri must both be set"):
        workload.run(products(), {})


def test_a_missing_artifact_is_named(published, tmp_path):
    missing = artifact_path(str(tmp_path / "data"), "v9")
    with pytest.raises(BadData, match="v9.*does not exist"):
        get_workload("packaging_scoring").run(products(), {"model_version": "v9", "model_uri": missing})


def test_scoring_products_together_gives_each_group_the_rows_it_gets_alone(published):
    """The workload says it combines batches: each unit's rows must not depend on the others of the call."""
    workload = get_workload("packaging_scoring")
    params = workload.resolve_params(published)
    assert workload.combines_batches(params)
    batch = products()
    together, _ = checked_output(workload, workload.run(batch, params), "together")
    for group, rows in batch.groupby("product_group"):
        alone, _ = checked_output(workload, workload.run(rows.reset_index(drop=True), params), "alone")
        pd.testing.assert_frame_equal(together[together["product_group"] == group].reset_index(drop=True), alone)


def test_a_damaged_artifact_is_bad_data_naming_the_version_and_the_file(published):
    Path(published["model_uri"]).write_bytes(b"not a parquet file at all")
    workload = get_workload("packaging_scoring")
    with pytest.raises(BadData) as refused:
        workload.run(products(), published)
    message = str(refused.value)
    assert message.startswith(f"model version {VERSION}: its artifact {published['model_uri']} cannot be read as "
                              "Parquet (ArrowInvalid: ")
    assert message.endswith("publish the version again (packaging_training's publish task) before scoring with it")
