"""The packaging_training DAG's input (labels) and its publish target (the approved models).

Input: `input_uri` when given, else synthetic labels (`packaging_data`) under
`DATA_ROOT/datasets/packaging`, generated week by week up to the end of the run's data interval:
each weekly run finds the weeks before it already there and adds its own, so labels accumulate.
Either way a run trains on the labels of the `lookback_days` days before the end of its data
interval (two years by default): a backfilled week sees only the labels it would have seen then.
"""
from __future__ import annotations

from typing import Any

from airflow.sdk import Asset, Param

from operators.kit import LookbackWindow, PublishTarget

#: Updated with {"version", "uri"} each time a version's models are published.
CURRENT_MODELS = Asset("packaging_models")
PUBLISH_MODELS = PublishTarget(asset=CURRENT_MODELS)


class SyntheticLabels(LookbackWindow):
    when_empty = "synthetic labels (the dataset_* params) under DATA_ROOT/datasets/packaging, up to the run's week"

    def __init__(self):
        super().__init__(lookback_days=728, minimum=7, maximum=3650)

    def params(self) -> dict[str, Param]:
        return {
            **super().params(),
            "dataset_groups": Param(1000, type="integer", minimum=1, maximum=100_000,
                                    description="product groups of the synthetic labels; units are 4 package types "
                                                "x groups"),
            "dataset_products_per_group": Param(200, type="integer", minimum=1, maximum=100_000,
                                                description="products of each product group"),
            "dataset_labels_per_week": Param(50_000, type="integer", minimum=1, maximum=10_000_000,
                                             description="labels that arrive each week"),
            "dataset_start_date": Param("2025-07-07", type="string", format="date",
                                        description="the week (YYYY-MM-DD) the first labels arrive; later weeks "
                                                    "add to them"),
            "dataset_seed": Param(0, type="integer", minimum=0, maximum=2**31 - 1,
                                  description="seed of the synthetic labels: the same seed gives the same labels"),
            "dataset_drift": Param(0.0, type="number", minimum=-5, maximum=5,
                                   description="added to the damage logit (times 1 + fragility) of labels from "
                                               "dataset_drift_from on: a change the evaluation should notice"),
            "dataset_drift_from": Param(None, type=["string", "null"], format="date",
                                        description="first day (YYYY-MM-DD) of drifted labels; empty: no drift"),
        }

    def resolve(self, params: dict[str, Any], run_root: str, data_interval_end) -> str:
        if params.get("input_uri"):
            return params["input_uri"]
        if params["dataset_drift"] and not params["dataset_drift_from"]:
            raise ValueError(f"dataset_drift ({params['dataset_drift']}) needs dataset_drift_from, the first day "
                             "of drifted labels; set dataset_drift_from or leave dataset_drift at 0")
        from operators.kit import data_root, options_for
        from operators.pipelines.packaging import packaging_data

        root = f"{data_root()}/datasets/packaging"
        return packaging_data.ensure(
            root, until=data_interval_end.date().isoformat(), groups=params["dataset_groups"],
            products_per_group=params["dataset_products_per_group"],
            labels_per_week=params["dataset_labels_per_week"], start_date=params["dataset_start_date"],
            seed=params["dataset_seed"], drift=params["dataset_drift"], drift_from=params["dataset_drift_from"],
            storage_options=options_for(root, "aws_default"))
