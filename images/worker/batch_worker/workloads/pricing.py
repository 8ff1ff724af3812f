"""Price recommendation: per-unit constant-elasticity demand fit, then the profit-maximising price.

A unit is one (segment, location, product). For each unit in a batch:

1. Rows are cleaned: rows with a null key or date, a non-finite number, price or current price
   <= 0, or quantity or unit cost < 0 are ignored (prep quarantines them upstream; this is the
   last line of defence). Days with zero quantity are ignored too: the log-log model cannot
   represent them and the holdout error is undefined there.
2. Fit log(quantity) = a + b * log(price) by weighted least squares on the rows before the holdout
   cut-off (the last `holdout_days` days of the batch, ending at its latest date); the weight of a
   row halves every `half_life_days` days before that latest date.
3. Shrink the unit's slope toward its segment's pooled slope with weight n / (n + shrinkage), where
   n is the number of training rows. The pooled slope is the within-unit estimate over the
   segment's identified units in the same batch (sum of their centred cross-products over the sum
   of their centred squares), so batches should keep each segment's units together. The intercept
   is refitted through the weighted means with the shrunk slope.
4. Holdout MAPE: mean |exp(a + b log p) - q| / q over the holdout rows.
5. Price: maximise (p - c) * exp(a) * p**b over [max(lo * cur, c * (1 + margin_floor),
   cur * (1 - max_change)), min(hi * cur, cur * (1 + max_change))], where cur and c are the current
   price and unit cost on the unit's latest row. For b < -1 the optimum is c * b / (1 + b) clipped
   to the interval (profit is unimodal); for -1 <= b < 0 profit rises with price, so the upper bound.

A unit that cannot be priced is "degenerate" with a reason (too_few_points, no_price_variation,
non_negative_elasticity, infeasible_constraints) and keeps its current price.

All units of a batch are computed together with segment sums (`bincount`) over group ids, on
NumPy or CuPy (`batch_worker.xp`); pandas is used only to read the batch and build the result.

Version rule: bump `version` whenever the output for the same input and parameters changes beyond
floating-point summation order (formula, cleaning rule, default parameter, output column).
"""
from __future__ import annotations

import math
from types import ModuleType
from typing import TYPE_CHECKING, Any

from batch_worker.schema import Column, InputSchema
from batch_worker.workloads import BadData, OutputColumn, OutputSchema, Parameter, Workload, register

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

UNIT_KEY = ("segment", "location", "product")
NUMERIC_COLUMNS = ("price", "quantity", "unit_cost", "current_price")

#: Weighted variance of log(price) at or below which a unit's price is considered constant.
MIN_LOG_PRICE_VARIANCE = 1e-10

#: Degenerate reasons by code; code 0 is a priced ("ok") unit. Earlier reasons take precedence.
REASONS = (None, "too_few_points", "no_price_variation", "non_negative_elasticity", "infeasible_constraints")

OUTPUT = OutputSchema((
    *(OutputColumn(key, "string", nullable=False, description="unit key") for key in UNIT_KEY),
    OutputColumn("n_points", "int", nullable=False, description="training rows of the fit"),
    OutputColumn("elasticity", "float", description="shrunk log-log slope (null when degenerate)"),
    OutputColumn("intercept", "float", description="log-log intercept (null when degenerate)"),
    OutputColumn("holdout_mape", "float", description="mean absolute percentage error on the holdout days"),
    OutputColumn("current_price", "float", description="price on the unit's latest row"),
    OutputColumn("unit_cost", "float", description="unit cost on the unit's latest row"),
    OutputColumn("recommended_price", "float", description="the price to set (current price when degenerate)"),
    OutputColumn("price_change_pct", "float", description="recommended vs current price, in percent"),
    OutputColumn("expected_profit_current", "float", description="modelled daily profit at the current price"),
    OutputColumn("expected_profit_recommended", "float", description="modelled daily profit at the recommendation"),
    OutputColumn("uplift", "float", description="expected_profit_recommended - expected_profit_current"),
    OutputColumn("status", "string", nullable=False, description="ok or degenerate"),
    OutputColumn("reason", "string", description="why a unit is degenerate (null when ok)"),
))
OUTPUT_COLUMNS = OUTPUT.names


def usable_rows(batch: pd.DataFrame) -> pd.DataFrame:
    """The rows of `batch` the fit may use (see step 1 of the module docstring), numbers as float64.

    Keeps a `day` column (days since 1970-01-01) and drops rows that fail any check; zero-quantity
    rows are kept here (they still carry the unit's latest price and cost).
    """
    import numpy as np
    import pandas as pd

    batch = batch.reset_index(drop=True)
    # Built from NumPy arrays in one go: per-column pandas assignment dominated small batches.
    numbers = {column: _float_array(batch[column]) for column in NUMERIC_COLUMNS}
    dates = batch["date"]
    if not pd.api.types.is_datetime64_any_dtype(dates.dtype):
        dates = pd.to_datetime(dates, errors="coerce")
    if isinstance(dates.dtype, pd.DatetimeTZDtype):
        dates = dates.dt.tz_localize(None)
    days = dates.to_numpy(dtype="datetime64[D]")
    checks = [batch[key].notna().to_numpy() for key in UNIT_KEY]
    checks.append(~np.isnat(days))
    checks += [np.isfinite(values) for values in numbers.values()]
    with np.errstate(invalid="ignore"):
        checks += [numbers["price"] > 0, numbers["current_price"] > 0, numbers["quantity"] >= 0,
                   numbers["unit_cost"] >= 0]
    valid = np.logical_and.reduce(checks)
    keep = slice(None) if valid.all() else valid  # filtering copies every column; prep usually leaves nothing to drop
    columns = {key: batch[key].to_numpy()[keep] for key in UNIT_KEY}
    columns.update({column: values[keep] for column, values in numbers.items()})
    columns["day"] = days[keep].astype(np.int64)
    return pd.DataFrame(columns)


def _float_array(column: "pd.Series") -> "np.ndarray":
    import numpy as np
    import pandas as pd

    if not pd.api.types.is_numeric_dtype(column.dtype):
        column = pd.to_numeric(column, errors="coerce")
    return column.to_numpy(dtype="float64", na_value=np.nan)


PARAMETERS = (
    Parameter("half_life_days", "number", 56.0, "Recency weight: a row's weight halves every this many days",
              exclusive_minimum=0),
    Parameter("holdout_days", "integer", 14, "The batch's last days, kept out of the fit to measure its error",
              minimum=0),
    Parameter("shrinkage", "number", 10.0, "Prior weight (in rows) of the segment's pooled elasticity",
              minimum=0),
    Parameter("min_points", "integer", 10, "Fewer training rows than this: the unit is too_few_points (a slope "
                                           "needs at least two)", minimum=2),
    Parameter("min_price_ratio", "number", 0.7, "Lowest price as a multiple of the current price",
              exclusive_minimum=0),
    Parameter("max_price_ratio", "number", 1.3, "Highest price as a multiple of the current price",
              exclusive_minimum=0),
    Parameter("max_change", "number", 0.15, "Largest price change as a share of the current price (0.15: +/-15 %)",
              minimum=0, exclusive_maximum=1),
    Parameter("margin_floor", "number", 0.05, "Lowest margin over unit cost: price >= unit_cost * (1 + margin_floor)",
              minimum=0),
)


def check_params(params: dict[str, Any]) -> None:
    """Raise ValueError naming every parameter the fit cannot use (types, ranges, contradictions)."""
    PricingWorkload().resolve_params(params)


def param_problems(params: dict[str, Any]) -> list[str]:
    """Each pair of well-typed, in-range fields that contradict each other, naming both."""
    problems = []
    lo, hi, change = params["min_price_ratio"], params["max_price_ratio"], params["max_change"]
    if lo > hi:
        problems.append(f"min_price_ratio ({lo}) is above max_price_ratio ({hi}): no price lies between them; "
                        "set min_price_ratio <= max_price_ratio")
    else:  # the ratio bounds and the change bounds must overlap, or no unit gets a price
        if lo > 1 + change:
            problems.append(f"min_price_ratio ({lo}) is above 1 + max_change ({1 + change:g}): every price it allows "
                            "changes more than max_change; lower min_price_ratio or raise max_change")
        if hi < 1 - change:
            problems.append(f"max_price_ratio ({hi}) is below 1 - max_change ({1 - change:g}): every price it allows "
                            "changes more than max_change; raise max_price_ratio or raise max_change")
    return problems


def fit_and_price(
    xp: ModuleType,
    unit: Any,
    segment_of_unit: Any,
    day: Any,
    price: Any,
    quantity: Any,
    unit_cost: Any,
    current_price: Any,
    params: dict[str, Any],
) -> dict[str, Any]:
    """Fit and price every unit at once; inputs and outputs are `xp` arrays.

    `unit` (per row) holds group ids 0..U-1, every id present; `segment_of_unit` (per unit) holds
    segment ids 0..S-1. Rows must be usable (`usable_rows`). Returns per-unit arrays keyed by the
    numeric output column names plus "reason_code" (index into REASONS).
    """
    n_units = int(segment_of_unit.shape[0])
    n_segments = int(segment_of_unit.max()) + 1

    def unit_sum(values):
        return xp.bincount(unit, weights=values, minlength=n_units)

    # The latest row (by day, then input order) holds the unit's current price and cost.
    row = xp.arange(unit.shape[0])
    order = xp.lexsort(xp.stack([row, day, unit]))
    latest = order[xp.cumsum(xp.bincount(unit, minlength=n_units)) - 1]
    cost = unit_cost[latest]
    current = current_price[latest]

    as_of = day.max()
    sold = quantity > 0
    train = sold & (day <= as_of - params["holdout_days"])
    holdout = sold & ~train
    log_price = xp.log(price)
    log_quantity = xp.log(xp.where(sold, quantity, 1.0))
    weight = xp.where(train, xp.exp(-math.log(2.0) * (as_of - day) / params["half_life_days"]), 0.0)

    n_points = unit_sum(train.astype(xp.float64))
    weight_sum = unit_sum(weight)
    safe_weight_sum = xp.where(weight_sum > 0, weight_sum, 1.0)
    mean_x = unit_sum(weight * log_price) / safe_weight_sum
    mean_y = unit_sum(weight * log_quantity) / safe_weight_sum
    dx = log_price - mean_x[unit]
    dy = log_quantity - mean_y[unit]
    sxx = unit_sum(weight * dx * dx)
    sxy = unit_sum(weight * dx * dy)

    enough = n_points >= params["min_points"]
    varied = sxx > MIN_LOG_PRICE_VARIANCE * weight_sum
    identified = enough & varied
    safe_sxx = xp.where(identified, sxx, 1.0)
    own_slope = sxy / safe_sxx

    segment_sxx = xp.bincount(segment_of_unit, weights=xp.where(identified, sxx, 0.0), minlength=n_segments)
    segment_sxy = xp.bincount(segment_of_unit, weights=xp.where(identified, sxy, 0.0), minlength=n_segments)
    pooled_slope = (segment_sxy / xp.where(segment_sxx > 0, segment_sxx, 1.0))[segment_of_unit]
    own_weight = n_points / xp.maximum(n_points + params["shrinkage"], 1.0)
    slope = own_weight * own_slope + (1.0 - own_weight) * pooled_slope
    intercept = mean_y - slope * mean_x
    slope = xp.where(identified, slope, xp.nan)
    intercept = xp.where(identified, intercept, xp.nan)

    fitted_intercept = xp.where(identified, intercept, 0.0)[unit]
    fitted_slope = xp.where(identified, slope, 0.0)[unit]
    predicted = xp.exp(fitted_intercept + fitted_slope * log_price)
    abs_pct_error = xp.where(holdout, xp.abs(predicted - quantity) / xp.where(holdout, quantity, 1.0), 0.0)
    n_holdout = unit_sum(holdout.astype(xp.float64))
    holdout_mape = xp.where(
        identified & (n_holdout > 0), unit_sum(abs_pct_error) / xp.where(n_holdout > 0, n_holdout, 1.0), xp.nan
    )

    low = xp.maximum(
        xp.maximum(params["min_price_ratio"] * current, cost * (1.0 + params["margin_floor"])),
        current * (1.0 - params["max_change"]),
    )
    high = xp.minimum(params["max_price_ratio"] * current, current * (1.0 + params["max_change"]))
    feasible = low <= high
    elastic = slope < -1.0
    unconstrained = xp.where(elastic, cost * slope / xp.where(elastic, 1.0 + slope, 1.0), high)
    optimum = xp.minimum(xp.maximum(unconstrained, low), high)

    reason_code = xp.where(
        ~enough,
        1,
        xp.where(~varied, 2, xp.where(~(slope < 0), 3, xp.where(~feasible, 4, 0))),
    )
    recommended = xp.where(reason_code == 0, optimum, current)

    def expected_profit(p):
        return (p - cost) * xp.exp(intercept + slope * xp.log(p))

    profit_current = expected_profit(current)
    profit_recommended = expected_profit(recommended)
    return {
        "n_points": n_points,
        "elasticity": slope,
        "intercept": intercept,
        "holdout_mape": holdout_mape,
        "current_price": current,
        "unit_cost": cost,
        "recommended_price": recommended,
        "price_change_pct": (recommended / current - 1.0) * 100.0,
        "expected_profit_current": profit_current,
        "expected_profit_recommended": profit_recommended,
        "uplift": profit_recommended - profit_current,
        "reason_code": reason_code,
    }


def empty_result() -> "pd.DataFrame":
    """A zero-row result with the output columns and dtypes."""
    import pandas as pd

    columns = {key: pd.Series([], dtype="str") for key in UNIT_KEY}
    columns["n_points"] = pd.Series([], dtype="int64")
    for name in OUTPUT_COLUMNS[len(UNIT_KEY) + 1 : -2]:
        columns[name] = pd.Series([], dtype="float64")
    columns["status"] = pd.Series([], dtype="str")
    columns["reason"] = pd.Series([], dtype="str")
    return pd.DataFrame(columns)


@register
class PricingWorkload(Workload):
    """Recommend one price per (segment, location, product) from its recent sales."""

    name = "pricing"
    version = "1"
    schema = InputSchema(
        columns=(
            Column("segment", "string"),
            Column("location", "string"),
            Column("product", "string"),
            Column("date", "date"),
            Column("price", "float", min=0.01),
            Column("quantity", "float", min=0),
            Column("unit_cost", "float", min=0),
            Column("current_price", "float", min=0.01),
        ),
        unit_key=UNIT_KEY,
        unique_key=(*UNIT_KEY, "date"),
        time_column="date",
    )
    parameters = PARAMETERS
    output = OUTPUT

    def validate(self, params: dict[str, Any]) -> list[str]:
        return param_problems(params)

    def run(self, batch: "pd.DataFrame", params: dict[str, Any]) -> "pd.DataFrame":
        import numpy as np
        import pandas as pd

        from batch_worker.xp import get_xp, to_numpy

        missing = [name for name in self.schema.names if name not in batch.columns]
        if missing:
            raise BadData(f"pricing batch lacks column(s) {missing}; has {list(batch.columns)}")
        params = self.resolve_params(params)
        rows = usable_rows(batch)
        if rows.empty:
            return empty_result()

        groups = rows.groupby(list(UNIT_KEY), sort=True)
        units = groups.size().index.to_frame(index=False)
        segment_of_unit = pd.factorize(units["segment"])[0]
        xp = get_xp()
        with np.errstate(all="ignore"):  # NaN/inf for degenerate units are expected and masked
            result = fit_and_price(
                xp,
                xp.asarray(groups.ngroup().to_numpy(np.int64)),
                xp.asarray(segment_of_unit.astype(np.int64)),
                xp.asarray(rows["day"].to_numpy()),
                *(xp.asarray(rows[column].to_numpy()) for column in NUMERIC_COLUMNS),
                params,
            )
        columns = {key: units[key].astype("str").to_numpy() for key in UNIT_KEY}
        for name in OUTPUT_COLUMNS[len(UNIT_KEY) : -2]:
            columns[name] = to_numpy(result[name])
        columns["n_points"] = columns["n_points"].astype(np.int64)
        reason_code = to_numpy(result["reason_code"])
        columns["status"] = np.where(reason_code == 0, "ok", "degenerate")
        columns["reason"] = pd.Series(np.asarray(REASONS, dtype=object)[reason_code], dtype="str")
        out = pd.DataFrame(columns)
        return out.astype({**dict.fromkeys(UNIT_KEY, "str"), "status": "str"})
