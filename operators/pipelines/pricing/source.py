"""The pricing DAG's input and its publish target.

Input: `input_uri` when given, else a synthetic dataset generated once under
`DATA_ROOT/datasets/pricing` (`dataset_rows` rows of `dataset_units` units from
`dataset_start_date`). An empty start date makes the data end the day before the run's data
interval ends, so scheduled runs and backfills work out of the box. Either way a run reads the
`lookback_days` days before the end of its data interval.
"""
from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.sdk import Asset, Param

from operators.kit import LookbackWindow, PublishTarget

#: Updated with {"version", "uri"} each time a version's prices are published.
CURRENT_PRICES = Asset("pricing_current_prices")
PUBLISH_PRICES = PublishTarget(asset=CURRENT_PRICES)


class SyntheticPricingData(LookbackWindow):
    when_empty = "a synthetic dataset (the dataset_* params) under DATA_ROOT/datasets/pricing"

    def __init__(self):
        super().__init__(lookback_days=28, minimum=7, maximum=730)

    def params(self) -> dict[str, Param]:
        return {
            **super().params(),
            "dataset_rows": Param(4_200_000, type="integer", minimum=10_000, maximum=50_000_000,
                                  description="rows of the synthetic dataset used when input_uri is empty"),
            "dataset_units": Param(100_000, type="integer", minimum=1, maximum=5_000_000,
                                   description="units (segment, location, product) of the synthetic dataset"),
            "dataset_start_date": Param(None, type=["string", "null"], format="date",
                                        description="first day of the synthetic dataset (YYYY-MM-DD); empty: the "
                                                    "data ends where the run's data interval ends"),
            "dataset_seed": Param(0, type="integer", minimum=0, maximum=2**31 - 1,
                                  description="seed of the synthetic dataset: the same seed gives the same rows"),
        }

    def resolve(self, params: dict[str, Any], run_root: str, data_interval_end) -> str:
        if params.get("input_uri"):
            return params["input_uri"]
        from operators.kit import data_root, options_for
        from operators.pipelines.pricing import pricing_data

        start = params["dataset_start_date"]
        if not start:  # as many days as rows/units make, ending the day before the interval ends
            _, days = pricing_data.plan(params["dataset_rows"], params["dataset_units"], None)
            start = (data_interval_end.date() - timedelta(days=days)).isoformat()
        root = f"{data_root()}/datasets/pricing"
        return pricing_data.ensure(root, rows=params["dataset_rows"], units=params["dataset_units"], start_date=start,
                                   seed=params["dataset_seed"], storage_options=options_for(root, "aws_default"))
