"""The units_of_work DAG's input: `input_uri` when given, else `units` generated units of `rows_per_unit` rows."""
from __future__ import annotations

from typing import Any

from airflow.sdk import Param

from operators.kit import DataSource


class GeneratedUnits(DataSource):
    when_empty = "`units` generated units of `rows_per_unit` rows"

    def params(self) -> dict[str, Param]:
        return {
            "units": Param(3000, type="integer", minimum=1, maximum=10_000_000,
                           description="units generated when input_uri is empty"),
            "rows_per_unit": Param(3, type="integer", minimum=1, maximum=1000,
                                   description="rows of each generated unit"),
        }

    def resolve(self, params: dict[str, Any], run_root: str, data_interval_end) -> str:
        if params.get("input_uri"):
            return params["input_uri"]
        from operators.kit import options_for
        from operators.pipelines.noop import noop_data

        target = f"{run_root}/input/noop.parquet"
        return noop_data.write(target, params["units"], params["rows_per_unit"], options_for(target, "aws_default"))
