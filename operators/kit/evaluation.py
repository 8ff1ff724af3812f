"""Evaluate a run's outputs against limits and the last approved version, and propose a decision.

An `Evaluator` belongs to a pipeline: it computes metrics from all units' outputs and statistics
of the input, compares them with the last approved version, declares its `limits`, and adds
report sections and the lines a notification shows. What is generic lives here:

- `propose` checks values against a table of `Limit`s: breaking any reject level proposes
  "reject"; meeting every approve level (the comfort zone) proposes "approve"; anything in
  between proposes "review", and a person decides. A limit whose value is missing (a delta
  before the first approval) is not checked, and the reasons say so.
- `evaluate_run` does one run's evaluation: read the outputs, compute, propose, register the
  version as PendingManualApproval, write the outputs artifact and the HTML report next to it.
- Every evaluator also gets the kit's `dead_letter_share` limit (`DEAD_LETTER_LIMIT`: units of
  failed batches / units in the input, approve level 0): a run with dead-lettered units is never
  approved automatically unless its `approve_dead_letter_share` param allows their share. The kit
  computes the value (and `units_dead_lettered`) from the collect step's counts, so no evaluator
  can leave it out; an evaluator that declares its own `dead_letter_share` limit sets other levels.

This module imports nothing heavy, so a DAG file may read an evaluator's `limits` at parse time.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from operators.kit.report import ReportSection
from operators.kit.shapes import Evaluation, Fanout, LimitRow, Lineage, Prepared, VersionRecord

if TYPE_CHECKING:
    import pandas as pd

DIRECTIONS = ("max", "min")
KINDS = ("approve", "reject")
#: The run params that override a limit's levels are `approve_<limit>` and `reject_<limit>`.
PARAM_PREFIXES = {"approve": "approve_", "reject": "reject_"}

__all__ = ["Limit", "Evaluator", "ReportSection", "propose", "limit_table", "evaluate_run", "number", "quantiles",
           "overrides_from_params", "json_safe", "DEAD_LETTER_LIMIT", "dead_letter_values"]


@dataclass(frozen=True)
class Limit:
    """One checked value: `max` keeps it at or below its levels, `min` at or above."""

    name: str
    direction: str
    approve: float | None
    reject: float | None
    description: str
    fmt: str = "{:.3g}"

    def __post_init__(self):
        if self.direction not in DIRECTIONS:
            raise ValueError(f"limit {self.name!r}: direction must be 'max' or 'min', not {self.direction!r}")
        if not self.description:
            raise ValueError(f"limit {self.name!r} needs a description: it is shown on the trigger form and report")

    def shown(self, value: Any) -> str:
        return number(value, self.fmt)

    def breaks(self, value: float, level: float) -> bool:
        return value > level if self.direction == "max" else value < level


#: The limit every evaluator gets: a run whose batches failed and left units dead-lettered (`min_success_ratio` below
#: 1 lets such a run go on) has incomplete outputs, so it is not approved by thresholds alone. The approve level 0
#: sends any dead letter to a person; no reject level by default (the rest of the run may be fine). A run allows a
#: share with `approve_dead_letter_share`, and rejects above one with `reject_dead_letter_share`.
DEAD_LETTER_LIMIT = Limit("dead_letter_share", "max", approve=0.0, reject=None,
                          description="units of failed batches (dead-lettered, see the run's dead_letter.parquet) / "
                                      "units in the input")


def dead_letter_values(prepared: Prepared, fanout: Fanout) -> dict[str, Any]:
    """`units_dead_lettered` and `dead_letter_share` of a run, from its collect step's counts."""
    failed = int(fanout.get("units_failed") or 0)
    units = int(prepared.get("units") or fanout.get("units") or 0)
    share = failed / units if units else (1.0 if failed else 0.0)
    return {"units_dead_lettered": failed, "dead_letter_share": min(share, 1.0)}


def number(value: Any, fmt: str = "{:.3g}") -> str:
    """A number as people read it: rounded by `fmt`; "n/a" when missing."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int) or (abs(value) >= 1e4 and math.isfinite(value)):
        return f"{value:,.0f}"  # counts and large amounts in full: "94,031 of 100,000", not "9.4e+04"
    return fmt.format(value)


def quantiles(values: "pd.Series", prefix: str) -> dict[str, float | None]:
    """`<prefix>_p10`, `<prefix>_p50` and `<prefix>_p90` of the finite values (None each when there are none)."""
    import numpy as np

    values = values[np.isfinite(values)]
    if values.empty:
        return {f"{prefix}_p10": None, f"{prefix}_p50": None, f"{prefix}_p90": None}
    q = values.quantile([0.1, 0.5, 0.9]).to_numpy()
    return {f"{prefix}_p10": float(q[0]), f"{prefix}_p50": float(q[1]), f"{prefix}_p90": float(q[2])}


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


class Evaluator:
    """What a pipeline's evaluation computes. Subclasses set `name`, `limits` and implement `metrics`.

    The defaults give a working evaluator from those alone: generic input statistics, no
    comparison beyond the previous version's id, no extra report section, and one summary
    line with each limit's value.
    """

    name: ClassVar[str]
    limits: ClassVar[tuple[Limit, ...]] = ()
    #: The file the run's outputs are stored and published as.
    artifact: ClassVar[str] = "outputs.parquet"

    @classmethod
    def checked_limits(cls) -> tuple[Limit, ...]:
        """The limits a run is decided on (and has `approve_<name>`/`reject_<name>` params for): the evaluator's own
        `limits`, then the kit's `DEAD_LETTER_LIMIT` unless the evaluator declares a limit of that name itself."""
        if any(limit.name == DEAD_LETTER_LIMIT.name for limit in cls.limits):
            return tuple(cls.limits)
        return (*cls.limits, DEAD_LETTER_LIMIT)

    def input_stats(self, prepared: Prepared) -> dict[str, Any]:
        return {name: prepared.get(name) for name in ("rows_ok", "units", "rows_in", "rows_quarantined", "window")}

    def metrics(self, outputs: "pd.DataFrame", prepared: Prepared, fanout: Fanout) -> dict[str, Any]:
        raise NotImplementedError(f"{type(self).__name__} must implement metrics(outputs, prepared, fanout)")

    def compare(self, metrics: dict[str, Any], input_stats: dict[str, Any],
                previous: VersionRecord | None) -> dict[str, Any]:
        return {"previous_version": previous["version"] if previous else None}

    def report_sections(self, outputs: "pd.DataFrame", metrics: dict[str, Any],
                        comparison: dict[str, Any]) -> list[ReportSection]:
        return []

    def summary_lines(self, metrics: dict[str, Any], comparison: dict[str, Any]) -> list[str]:
        values = {**metrics, **comparison}
        return ["metrics: " + ", ".join(f"{limit.name} {limit.shown(values.get(limit.name))}"
                                        for limit in self.limits)] if self.limits else []


def overrides_from_params(limits: tuple[Limit, ...], params: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    """{"approve": {...}, "reject": {...}} from the run params `approve_<limit>` / `reject_<limit>` present."""
    return {kind: {limit.name: params[prefix + limit.name] for limit in limits if prefix + limit.name in params}
            for kind, prefix in PARAM_PREFIXES.items()}


def _levels(limits: tuple[Limit, ...], overrides: dict[str, Any] | None) -> dict[str, dict[str, float | None]]:
    """Each limit's approve and reject level: the overrides over the defaults; ValueError naming a bad override."""
    known = {limit.name: limit for limit in limits}
    levels = {limit.name: {"approve": limit.approve, "reject": limit.reject} for limit in limits}
    for kind, given in (overrides or {}).items():
        if kind not in KINDS:
            raise ValueError(f"limit overrides: unknown set {kind!r}; expected 'approve' and/or 'reject'")
        if not isinstance(given, dict):
            raise ValueError(f"limit overrides: {kind!r} must map limit names to numbers, got {given!r}")
        for name, level in given.items():
            if name not in known:
                raise ValueError(f"{PARAM_PREFIXES[kind]}{name}: no limit {name!r}; the limits are "
                                 f"{', '.join(sorted(known)) or '(none)'}")
            if level is not None and (isinstance(level, bool) or not isinstance(level, (int, float))
                                      or not math.isfinite(level)):
                raise ValueError(f"{PARAM_PREFIXES[kind]}{name} must be a number, or null to leave it unchecked; "
                                 f"got {level!r}")
            levels[name][kind] = None if level is None else float(level)
    return levels


def limit_table(values: dict[str, Any], limits: tuple[Limit, ...],
                overrides: dict[str, Any] | None = None) -> list[LimitRow]:
    """Each limit with its value, the levels applied and its outcome: approve, review, reject or not checked."""
    levels = _levels(limits, overrides)
    rows: list[LimitRow] = []
    for limit in limits:
        value = values.get(limit.name)
        approve, reject = levels[limit.name]["approve"], levels[limit.name]["reject"]
        if approve is None and reject is None:
            outcome = "no level set"
        elif _missing(value):
            outcome = "not checked"
        elif reject is not None and limit.breaks(value, reject):
            outcome = "reject"
        elif approve is not None and limit.breaks(value, approve):
            outcome = "review"
        else:
            outcome = "approve"
        rows.append({"name": limit.name, "direction": "at most" if limit.direction == "max" else "at least",
                     "value": None if _missing(value) else value, "approve": approve, "reject": reject,
                     "outcome": outcome, "description": limit.description})
    return rows


def propose(values: dict[str, Any], limits: tuple[Limit, ...],
            overrides: dict[str, Any] | None = None) -> tuple[str, list[str]]:
    """("approve" | "review" | "reject", reasons) from the values (metrics and deltas) and the limits."""
    by_name = {limit.name: limit for limit in limits}
    rows = limit_table(values, limits, overrides)

    def breach(row: LimitRow, kind: str) -> str:
        limit = by_name[row["name"]]
        sign = ">" if limit.direction == "max" else "<"
        return f"{limit.name} {limit.shown(row['value'])} {sign} {kind} limit {limit.shown(row[kind])}"

    unchecked = [f"{row['name']} not checked: no value" for row in rows if row["outcome"] == "not checked"]
    hard = [breach(row, "reject") for row in rows if row["outcome"] == "reject"]
    if hard:
        return "reject", hard + unchecked
    soft = [breach(row, "approve") for row in rows if row["outcome"] == "review"]
    if soft:
        return "review", soft + unchecked
    return "approve", ["every approve limit met", *unchecked]


def json_safe(value: Any) -> Any:
    """`value` with NumPy scalars as Python numbers, NaN and infinities as None, tuples as lists."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if hasattr(value, "item"):  # a NumPy scalar
        return json_safe(value.item())
    return str(value)


def evaluate_run(evaluator: Evaluator, *, model: str, fanout: Fanout, prepared: Prepared,
                 overrides: dict[str, Any] | None, review_always: bool, lineage: Lineage, version: str,
                 root: str | None = None, aws_conn_id: str | None = "aws_default",
                 interval: tuple[Any, Any] | None = None) -> Evaluation:
    """Evaluate one run and register it as a pending version of `model`; return what later tasks need.

    Reads every batch output of the run (`fanout["results"]`), computes the evaluator's metrics
    and comparison with the version approved for the interval before the run's (`interval`:
    its data interval's (start, end); `Registry.approved_before`; without one, the current
    version), proposes, registers with the interval, and writes the
    outputs (`evaluator.artifact`) and `report.html` into the version's folder. `version` may
    come back as `<version>-rN` when that id is already decided (see `Registry.register`).
    """
    from batch_worker.runtime import parquet_bytes

    from operators.kit import engine, registry, report

    limits_checked = evaluator.checked_limits()
    _levels(limits_checked, overrides)  # a bad override fails before anything is read
    outputs = engine.read_run_outputs(fanout["results"], aws_conn_id)
    if outputs.empty:
        raise ValueError(f"no batch of this run left an output to evaluate ({fanout.get('failed', 0)} batches failed, "
                         f"{fanout.get('units_failed', 0)} units dead-lettered: {fanout.get('dead_letter')}); "
                         f"nothing was registered. Fix the failures the shards reported, then clear the run")
    input_stats = json_safe(prepared["input_stats"] if "input_stats" in prepared else evaluator.input_stats(prepared))
    # The kit's dead-letter values win over an evaluator's own of the same name: the decision must see them.
    metrics = json_safe({**evaluator.metrics(outputs, prepared, fanout), **dead_letter_values(prepared, fanout)})
    models = registry.Registry(root or engine.data_root(), model, aws_conn_id)
    # A backfilled week is compared with the week before it, not with the newest approved version.
    previous = models.approved_before(interval[0]) if interval else models.current()
    comparison = json_safe(evaluator.compare(metrics, input_stats, previous))
    values = {**metrics, **comparison}
    proposal, reasons = propose(values, limits_checked, overrides)
    if review_always and proposal == "approve":
        proposal, reasons = "review", [*reasons, "review: always (run parameter)"]
    limits = json_safe(limit_table(values, limits_checked, overrides))
    version = models.register(version, metrics=metrics, input_stats=input_stats, lineage=json_safe(lineage),
                              proposed=proposal, reasons=reasons, artifact=evaluator.artifact,
                              limits=limits, interval=interval)["version"]
    folder = engine.location(models.version_dir(version), aws_conn_id)
    artifact = folder.join(evaluator.artifact)
    folder.write_bytes(artifact, parquet_bytes(outputs))
    window = prepared.get("window")
    title = f"Evaluation of {model}" + (f", window {window[0]} to {window[1]}" if window else "")
    page = report.render(title=title, version=version, proposal=proposal, reasons=reasons, limits=limits,
                         values={"Metrics": metrics, "Against the last approved version": comparison,
                                 "Input": input_stats},
                         sections=evaluator.report_sections(outputs, metrics, comparison), lineage=lineage)
    report_uri = folder.join("report.html")
    folder.write_bytes(report_uri, page.encode())
    lines = evaluator.summary_lines(metrics, comparison)
    print(f"version {version}: proposed {proposal} ({'; '.join(reasons)}); report {report_uri}")
    return {"version": version, "proposal": proposal, "reasons": reasons, "report": report_uri,
            "metrics": metrics, "comparison": comparison, "lines": lines, "artifact": artifact,
            "limits": limits}
