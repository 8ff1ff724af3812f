"""The kit, as a pipeline's author uses it: every name a DAG file, a data source, an evaluator or a stage of a
`UnitPipeline` subclass needs, importable from here (`from operators.kit import unit_pipeline, Evaluator, Limit`).

- building a pipeline: `unit_pipeline` (its options: its signature and docstring), `UnitPipeline` (to override
  a stage), `DataSource`, `LookbackWindow`, `PublishTarget`, `weekly_intervals`; for a stage or a DAG of one's
  own, `stage`, `check_conf`, `dag_params` and `skip_rest_of_run`;
- judging its runs: `Evaluator`, `Limit`, `number`, `quantiles`, and for the report `ReportSection`, `table`,
  `rows_table`, `figure_png`;
- finding its data: `data_root`, `location`, `options_for`;
- the shapes of what the stages hand each other (`operators.kit.shapes`): `RunInput`, `Prepared`, `Fanout`,
  `Evaluation`, `Decision`, `VersionRecord`, ...

The workload itself runs in the worker image, which holds no `operators`: it imports the worker's package
(`batch_worker.schema`: `Column`, `InputSchema`; `batch_worker.workloads`: `Workload`, `Parameter`,
`OutputSchema`, `OutputColumn`, `register`, `BadData`).

Each name is imported from its module when it is first used (PEP 562 `__getattr__`): Airflow imports this
package whenever it parses a DAG file, `import operators.kit` loads nothing, and `from operators.kit import
Evaluator` loads only the light evaluation module, not the pipeline's Airflow imports. The `TYPE_CHECKING`
imports say the same for type checkers and editors (tests/operators/kit/test_author_api.py keeps both equal).
"""
from __future__ import annotations

import importlib

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing: type checkers read the name itself

#: The module each name comes from.
_HOMES = {
    "operators.kit.pipeline": ("unit_pipeline", "UnitPipeline", "DataSource", "LookbackWindow", "PublishTarget",
                               "weekly_intervals", "stage", "check_conf", "dag_params"),
    "operators.kit.runview": ("skip_rest_of_run",),
    "operators.kit.evaluation": ("Evaluator", "Limit", "number", "quantiles"),
    "operators.kit.report": ("ReportSection", "table", "rows_table", "figure_png"),
    "operators.kit.storage": ("data_root", "location", "options_for"),
    "operators.kit.shapes": ("RunInput", "Prepared", "ShardPlan", "ShardSummary", "Fanout", "LimitRow", "Lineage",
                             "Evaluation", "NotCurrent", "Decision", "VersionRecord", "RunSummary"),
}
_HOME_OF = {name: module for module, names in _HOMES.items() for name in names}

__all__ = [name for names in _HOMES.values() for name in names]

if TYPE_CHECKING:  # the same names for type checkers and editors (F401: exported here, not used)
    from typing import Any

    from operators.kit.evaluation import Evaluator, Limit, number, quantiles  # noqa: F401
    from operators.kit.pipeline import (DataSource, LookbackWindow, PublishTarget, UnitPipeline,  # noqa: F401
                                        check_conf, dag_params, stage, unit_pipeline, weekly_intervals)
    from operators.kit.report import ReportSection, figure_png, rows_table, table  # noqa: F401
    from operators.kit.runview import skip_rest_of_run  # noqa: F401
    from operators.kit.shapes import (Decision, Evaluation, Fanout, LimitRow, Lineage, NotCurrent,  # noqa: F401
                                      Prepared, RunInput, RunSummary, ShardPlan, ShardSummary, VersionRecord)
    from operators.kit.storage import data_root, location, options_for  # noqa: F401


def __getattr__(name: str) -> Any:
    module = _HOME_OF.get(name)
    if module is None:  # also how `from operators.kit import engine` finds that it is a submodule
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # the next use does not come here
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
