"""Packaging damage: a regularised logistic regression per (package type, product group).

A unit is one (package type, product group); its rows are labels: a product shipped in that
package type, and whether it arrived damaged. For each unit in a batch:

1. Time-based holdout: the unit's labels of the last `holdout_days` days (up to its latest label)
   are held out; the earlier ones (no older than `max_label_age_days` when set) are trained on.
2. Features are standardised with the training rows' mean and standard deviation (a constant
   feature keeps scale 1), then P(damaged) = sigmoid(w0 + w . z) is fitted by Newton's method with
   an L2 penalty `l2` on w (not on the intercept; weighed against the summed, not the mean,
   log-loss, so a unit with many labels is shrunk less), until every step is below `tolerance` or after
   `max_iterations`. The coefficients are reported on the raw feature scale, so a product is
   scored as sigmoid(intercept + sum(coef_<feature> * feature)).
3. Validation on the holdout labels: mean log-loss, and AUC (null when the holdout holds only one
   class).

A unit that cannot be fitted is "degenerate" with a reason: too_few_labels (fewer than
`min_train_labels` training labels), one_class (its training labels are all damaged or all
intact), not_converged. It still reports its label counts and balance.

All units of a batch are fitted together: per-unit sums are `bincount`s over unit ids and the
Newton steps one batched solve, on NumPy or CuPy (`batch_worker.xp`); pandas reads the batch and
ranks the holdout for AUC.

Version rule: bump `version` whenever the output for the same input and parameters changes beyond
floating-point summation order (formula, feature, default parameter, output column).
"""
from __future__ import annotations

from types import ModuleType
from typing import TYPE_CHECKING, Any

from batch_worker.schema import Column, InputSchema
from batch_worker.workloads import BadData, OutputColumn, OutputSchema, Parameter, Workload, register

if TYPE_CHECKING:
    import pandas as pd

UNIT_KEY = ("package_type", "product_group")
#: The product features, in model order; a model's coefficients are `coef_<feature>`.
FEATURES = ("weight_kg", "longest_side_cm", "fragility", "liquid")
LABEL = "damaged"
#: Degenerate reasons by code; code 0 is a fitted ("ok") unit. Earlier reasons take precedence.
REASONS = (None, "too_few_labels", "one_class", "not_converged")
#: Predicted probabilities are clipped to [EPSILON, 1 - EPSILON] in the log-loss.
EPSILON = 1e-12

#: A product's features as input columns: the labels' and the scored inventory's.
FEATURE_COLUMNS = (
    Column("weight_kg", "float", min=0),
    Column("longest_side_cm", "float", min=0),
    Column("fragility", "float", min=0, max=1),
    Column("liquid", "float", min=0, max=1),
)

SCHEMA = InputSchema(
    columns=(
        Column("package_type", "string"),
        Column("product_group", "string"),
        Column("product_id", "string"),
        Column("label_id", "string"),
        Column("labelled_on", "date"),
        *FEATURE_COLUMNS,
        Column(LABEL, "int", min=0, max=1),
    ),
    unit_key=UNIT_KEY,
    unique_key=("label_id",),
    time_column="labelled_on",
)

OUTPUT = OutputSchema((
    *(OutputColumn(key, "string", nullable=False, description="unit key") for key in UNIT_KEY),
    OutputColumn("labels", "int", nullable=False, description="labels of the unit in the run's window"),
    OutputColumn("train_labels", "int", nullable=False, description="labels the model was fitted on"),
    OutputColumn("holdout_labels", "int", nullable=False, description="labels of the holdout days"),
    OutputColumn("positives", "int", nullable=False, description="damaged labels among all the unit's labels"),
    OutputColumn("positive_share", "float", nullable=False, description="positives / labels: the label balance"),
    OutputColumn("intercept", "float", description="logit intercept on the raw feature scale (null if degenerate)"),
    *(OutputColumn(f"coef_{feature}", "float", description=f"logit coefficient of {feature} (null if degenerate)")
      for feature in FEATURES),
    OutputColumn("holdout_log_loss", "float", description="mean log-loss on the holdout labels"),
    OutputColumn("holdout_auc", "float", description="AUC on the holdout labels (null with one class there)"),
    OutputColumn("iterations", "int", nullable=False, description="Newton steps taken"),
    OutputColumn("status", "string", nullable=False, description="ok or degenerate"),
    OutputColumn("reason", "string", description="why a unit is degenerate (null when ok)"),
))

PARAMETERS = (
    Parameter("l2", "number", 1.0, "L2 penalty on the standardised feature weights (not the intercept), against "
                                   "the summed log-loss of the unit's training labels; larger shrinks harder", exclusive_minimum=0, maximum=1e6),
    Parameter("holdout_days", "integer", 28, "A unit's labels of its last this many days are held out to validate "
                                             "the fit (time-based holdout)", minimum=1, maximum=365),
    Parameter("max_label_age_days", "integer", None, "Labels older than this many days before the unit's latest "
                                                     "label are not trained on; empty: every label of the window",
              minimum=2, maximum=3650, nullable=True),
    Parameter("min_train_labels", "integer", 30, "Units with fewer training labels are too_few_labels",
              minimum=2, maximum=1_000_000),
    Parameter("max_iterations", "integer", 25, "Newton steps at most; a unit still moving then is not_converged",
              minimum=1, maximum=200),
    Parameter("tolerance", "number", 1e-6, "A unit has converged when no weight moves more than this in a step",
              exclusive_minimum=0, maximum=1),
)


def param_problems(params: dict[str, Any]) -> list[str]:
    """Contradictions between well-typed, in-range parameters, each naming both fields."""
    age, holdout = params["max_label_age_days"], params["holdout_days"]
    if age is not None and age <= holdout:
        return [f"max_label_age_days ({age}) must be greater than holdout_days ({holdout}): every label would be "
                "held out or too old, leaving none to train on; raise max_label_age_days or leave it empty"]
    return []


def fit_units(xp: ModuleType, unit: Any, train: Any, features: Any, label: Any, n_units: int,
              params: dict[str, Any]) -> dict[str, Any]:
    """Fit every unit's model at once; inputs and outputs are `xp` arrays.

    `unit` (per row) holds ids 0..n_units-1, `train` marks training rows, `features` is (rows, F)
    and `label` 0/1 floats. Returns per-unit "weights" (n_units, F + 1) on the raw scale (intercept
    first; NaN where not fitted), "reason_code" (index into REASONS) and "iterations".
    """
    rows, n_features = features.shape

    def unit_sum(values):
        return xp.bincount(unit, weights=values, minlength=n_units)

    weight = train.astype(xp.float64)
    n_train = unit_sum(weight)
    positives = unit_sum(weight * label)
    enough = n_train >= params["min_train_labels"]
    both_classes = (positives > 0) & (positives < n_train)
    fit = enough & both_classes
    weight = weight * fit[unit]

    safe_n = xp.maximum(n_train, 1.0)
    mean = xp.stack([unit_sum(weight * features[:, f]) for f in range(n_features)], axis=1) / safe_n[:, None]
    centred = features - mean[unit]
    var = xp.stack([unit_sum(weight * centred[:, f] ** 2) for f in range(n_features)], axis=1) / safe_n[:, None]
    scale = xp.where(var > 1e-12, xp.sqrt(var), 1.0)
    design = xp.concatenate([xp.ones((rows, 1)), centred / scale[unit]], axis=1)  # (rows, F + 1)

    size = n_features + 1
    penalty = xp.full(size, float(params["l2"]))
    penalty[0] = 1e-9  # the intercept is not penalised; this keeps a unit's Hessian invertible
    w = xp.zeros((n_units, size))
    moving = fit.copy()
    iterations = xp.zeros(n_units, dtype=xp.int64)
    pairs = [(j, k) for j in range(size) for k in range(j, size)]
    for _ in range(params["max_iterations"]):
        if not bool(moving.any()):
            break
        eta = (design * w[unit]).sum(axis=1)
        p = 1.0 / (1.0 + xp.exp(-eta))
        residual = weight * (p - label)
        curvature = weight * p * (1.0 - p)
        gradient = xp.stack([unit_sum(residual * design[:, j]) for j in range(size)], axis=1) + penalty * w
        hessian = xp.zeros((n_units, size, size))
        for j, k in pairs:
            hessian[:, j, k] = hessian[:, k, j] = unit_sum(curvature * design[:, j] * design[:, k])
        hessian = hessian + xp.eye(size) * penalty
        step = xp.linalg.solve(hessian, gradient[:, :, None])[:, :, 0]
        step = xp.where(moving[:, None], step, 0.0)
        w = w - step
        iterations = iterations + moving
        moving = moving & (xp.abs(step).max(axis=1) > params["tolerance"])

    reason_code = xp.where(~enough, 1, xp.where(~both_classes, 2, xp.where(moving, 3, 0)))
    coef = w[:, 1:] / scale
    intercept = w[:, 0] - (coef * mean).sum(axis=1)
    raw = xp.concatenate([intercept[:, None], coef], axis=1)
    raw = xp.where((reason_code == 0)[:, None], raw, xp.nan)
    return {"weights": raw, "reason_code": reason_code, "iterations": iterations}


def holdout_metrics(frame: "pd.DataFrame", n_units: int) -> tuple[Any, Any]:
    """(log-loss, AUC) per unit from holdout rows with columns unit, label, probability (NaN where none)."""
    import numpy as np

    log_loss = np.full(n_units, np.nan)
    auc = np.full(n_units, np.nan)
    frame = frame[frame["probability"].notna()]
    if frame.empty:
        return log_loss, auc
    p = frame["probability"].clip(EPSILON, 1 - EPSILON)
    y = frame["label"]
    loss = -(y * np.log(p) + (1 - y) * np.log(1 - p))
    groups = loss.groupby(frame["unit"])
    log_loss[groups.mean().index.to_numpy()] = groups.mean().to_numpy()
    ranks = frame.groupby("unit")["probability"].rank(method="average")
    per_unit = frame.assign(positive_rank=ranks * y).groupby("unit").agg(
        n=("label", "size"), pos=("label", "sum"), rank_sum=("positive_rank", "sum"))
    neg = per_unit["n"] - per_unit["pos"]
    both = (per_unit["pos"] > 0) & (neg > 0)
    scored = per_unit[both]
    values = (scored["rank_sum"] - scored["pos"] * (scored["pos"] + 1) / 2) / (scored["pos"] * neg[both])
    auc[scored.index.to_numpy()] = values.to_numpy()
    return log_loss, auc


@register
class PackagingWorkload(Workload):
    """Fit P(damaged | product features) per (package type, product group) and validate it on its latest labels."""

    name = "packaging"
    version = "1"
    schema = SCHEMA
    parameters = PARAMETERS
    output = OUTPUT

    def validate(self, params: dict[str, Any]) -> list[str]:
        return param_problems(params)

    def run(self, batch: "pd.DataFrame", params: dict[str, Any]) -> "pd.DataFrame":
        import numpy as np
        import pandas as pd

        from batch_worker.xp import get_xp, to_numpy

        missing = [name for name in (*UNIT_KEY, "labelled_on", *FEATURES, LABEL) if name not in batch.columns]
        if missing:
            raise BadData(f"packaging batch lacks column(s) {missing}; has {list(batch.columns)}")
        params = self.resolve_params(params)
        batch = batch.reset_index(drop=True)
        label = pd.to_numeric(batch[LABEL], errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
        bad = ~np.isin(label, (0.0, 1.0))
        if bad.any():
            raise BadData(f"packaging batch: column {LABEL!r} must be 0 or 1; row {int(np.argmax(bad))} holds "
                          f"{batch[LABEL].iloc[int(np.argmax(bad))]!r}")
        unit = batch.groupby(list(UNIT_KEY), sort=True).ngroup().to_numpy(np.int64)
        units = batch[list(UNIT_KEY)].drop_duplicates().sort_values(list(UNIT_KEY)).reset_index(drop=True)
        n_units = len(units)
        day = pd.to_datetime(batch["labelled_on"]).to_numpy(dtype="datetime64[D]").astype(np.int64)
        latest = pd.Series(day).groupby(unit).transform("max").to_numpy()
        holdout = day > latest - params["holdout_days"]
        train = ~holdout
        if params["max_label_age_days"] is not None:
            train &= day > latest - params["max_label_age_days"]
        features = batch[list(FEATURES)].to_numpy(dtype="float64")

        xp = get_xp()
        with np.errstate(all="ignore"):
            fitted = fit_units(xp, xp.asarray(unit), xp.asarray(train), xp.asarray(features), xp.asarray(label),
                               n_units, params)
        weights = to_numpy(fitted["weights"])
        reason_code = to_numpy(fitted["reason_code"])
        with np.errstate(all="ignore"):
            eta = weights[unit, 0] + (features * weights[unit, 1:]).sum(axis=1)
            probability = 1.0 / (1.0 + np.exp(-eta))
        held = pd.DataFrame({"unit": unit[holdout], "label": label[holdout], "probability": probability[holdout]})
        log_loss, auc = holdout_metrics(held, n_units)

        counts = np.bincount(unit, minlength=n_units)
        positives = np.bincount(unit, weights=label, minlength=n_units)
        columns = {key: units[key].astype("str").to_numpy() for key in UNIT_KEY}
        columns.update(
            labels=counts.astype(np.int64),
            train_labels=np.bincount(unit, weights=train, minlength=n_units).astype(np.int64),
            holdout_labels=np.bincount(unit, weights=holdout, minlength=n_units).astype(np.int64),
            positives=positives.astype(np.int64),
            positive_share=positives / counts,
            intercept=weights[:, 0],
            **{f"coef_{feature}": weights[:, 1 + i] for i, feature in enumerate(FEATURES)},
            holdout_log_loss=log_loss,
            holdout_auc=auc,
            iterations=to_numpy(fitted["iterations"]).astype(np.int64),
            status=np.where(reason_code == 0, "ok", "degenerate"),
            reason=pd.Series(np.asarray(REASONS, dtype=object)[reason_code], dtype="str"),
        )
        return pd.DataFrame(columns).astype({**dict.fromkeys(UNIT_KEY, "str"), "status": "str"})
