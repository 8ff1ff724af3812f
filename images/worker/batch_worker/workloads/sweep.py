"""Training sweeps: one unit is one configuration (hyper-parameters) trained on the sweep's data slice.

A batch holds configurations (`config_id`, `config_key`, `hyperparameters` as JSON text); the
sweep's data slice is one Parquet file named by its content (`data_uri`, under the outputs, so
the same data gives the same cache key). `trainer` chooses what a configuration trains:

- `packaging`: the packaging damage model (`batch_worker.workloads.packaging`) with the
  configuration's hyper-parameters, on every unit of the data slice; the configuration's metrics
  are the label-weighted holdout log-loss and the mean holdout AUC of its fitted units;
- `trivial`: a closed-form score of the hyper-parameters, no data: the engine's own load, to
  measure what a sweep costs beyond its training.

A configuration that cannot be trained (no unit fitted: every unit too_few_labels, one_class or
not_converged) is a terminal failure of class `no_fit`, reported as a row with its first reason,
not a failed batch: the same data and hyper-parameters give the same outcome, so a retry cannot
help and the other configurations of its batch stand. Anything else that goes wrong fails the
batch and keeps the kit's failure classes.
"""
from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from batch_worker.schema import Column, InputSchema
from batch_worker.workloads import BadData, OutputColumn, OutputSchema, Parameter, Workload, register

if TYPE_CHECKING:
    import pandas as pd

#: The hyper-parameters a configuration may set: the packaging trainer's parameters.
TRAINED_WORKLOAD = "packaging"
NO_FIT = "no_fit"

SCHEMA = InputSchema(
    columns=(Column("config_id", "string"), Column("config_key", "string"), Column("hyperparameters", "string")),
    unit_key=("config_id",),
    unique_key=("config_id",),
)

OUTPUT = OutputSchema((
    OutputColumn("config_id", "string", nullable=False, description="the configuration"),
    OutputColumn("config_key", "string", nullable=False, description="hash of its hyper-parameters, data and trainer"),
    OutputColumn("status", "string", nullable=False, description="trained, or failed (a terminal failure)"),
    OutputColumn("failure_class", "string", description="why it failed (no_fit); null when trained"),
    OutputColumn("error", "string", description="the first error; null when trained"),
    OutputColumn("score", "float", description="the metric the leaderboard ranks by (lower is better): holdout "
                                               "log-loss"),
    OutputColumn("holdout_auc", "float", description="mean holdout AUC of the fitted units"),
    OutputColumn("units_fitted", "int", description="units the configuration fitted"),
    OutputColumn("units_degenerate", "int", description="units it could not fit"),
    OutputColumn("train_seconds", "float", description="seconds its training took"),
))

_DATA_CACHE: dict[str, Any] = {}


def read_data_slice(uri: str) -> "pd.DataFrame":
    """The sweep's data slice, read once per process: a child trains many configurations on it."""
    import io

    import pandas as pd

    from batch_worker.storage import Location

    if uri not in _DATA_CACHE:
        _DATA_CACHE.clear()
        _DATA_CACHE[uri] = pd.read_parquet(io.BytesIO(Location.parse(uri).read_bytes()))
    return _DATA_CACHE[uri]


def trivial_score(hyperparameters: dict[str, Any]) -> float:
    """A deterministic score of the hyper-parameters: what `trivial` training reports."""
    import math

    return sum(math.log1p(abs(float(v))) for v in hyperparameters.values() if isinstance(v, (int, float))) or 0.0


@register
class SweepTrainWorkload(Workload):
    name = "sweep_train"
    version = "1"
    schema = SCHEMA
    parameters = (
        Parameter("trainer", "string", "packaging", "what each configuration trains: packaging (the damage model "
                  "on the data slice) or trivial (no data; the engine's own load)", enum=("packaging", "trivial")),
        Parameter("data_uri", "string", None, "the data slice (Parquet, named by its content); set by the sweep",
                  nullable=True),
    )
    output = OUTPUT

    def validate(self, params: dict[str, Any]) -> list[str]:
        if params["trainer"] == "packaging" and not params["data_uri"]:
            return ["trainer 'packaging' needs data_uri, the data slice to train on"]
        return []

    def run(self, batch: "pd.DataFrame", params: dict[str, Any]) -> "pd.DataFrame":
        import pandas as pd

        from batch_worker.workloads import get_workload

        trainer = get_workload(TRAINED_WORKLOAD)
        data = read_data_slice(params["data_uri"]) if params["trainer"] == "packaging" else None
        rows = []
        for config in batch.sort_values("config_id").itertuples(index=False):
            try:
                hyperparameters = json.loads(config.hyperparameters)
            except ValueError as exc:
                raise BadData(f"configuration {config.config_id}: hyperparameters is not JSON: {exc}") from exc
            started = time.perf_counter()
            row = {"config_id": config.config_id, "config_key": config.config_key, "status": "trained",
                   "failure_class": None, "error": None, "score": None, "holdout_auc": None,
                   "units_fitted": 0, "units_degenerate": 0}
            if data is None:
                row.update(score=trivial_score(hyperparameters), units_fitted=1)
            else:
                fitted = trainer.run(data, trainer.resolve_params(hyperparameters))
                ok = fitted[fitted["status"] == "ok"]
                row.update(units_fitted=len(ok), units_degenerate=len(fitted) - len(ok))
                if ok.empty:
                    reasons = fitted["reason"].value_counts()
                    row.update(status="failed", failure_class=NO_FIT,
                               error=f"configuration {config.config_id}: no unit could be fitted ("
                                     + ", ".join(f"{n} {reason}" for reason, n in reasons.items()) + ")")
                else:
                    weights = ok["holdout_labels"].clip(lower=0)
                    losses = ok["holdout_log_loss"]
                    usable = losses.notna() & (weights > 0)
                    if usable.any():
                        row["score"] = float((losses[usable] * weights[usable]).sum() / weights[usable].sum())
                    auc = ok["holdout_auc"].dropna()
                    row["holdout_auc"] = float(auc.mean()) if len(auc) else None
            row["train_seconds"] = time.perf_counter() - started
            rows.append(row)
        return pd.DataFrame(rows, columns=list(OUTPUT.names))
