"""The pipeline factory: one call builds a unit-of-work DAG from a workload, an evaluator, a data source and a publish target.

    dataset -> prepare -> plan -> run_shard (mapped) -> collect -> evaluate -> gate -> ask_reviewer
            -> decide -> publish -> notify

Without an evaluator the DAG ends at its collect step, named `summary` (no gate, approval or
publish); without a publish target an approved version is registered but nothing is published.
Each stage's work is a method of `UnitPipeline`: a pipeline that needs a different stage subclasses
it and overrides that method; the wiring stays here.

Params are generated, never written by hand in a DAG file:

- the kit's own (`KIT_PARAMS`: input, bucketing, sharding, queue, quorum, timeouts; `review` with
  an evaluator), with per-pipeline defaults from `defaults`;
- every workload `Parameter` as a top-level param of the same name (its JSON Schema);
- every evaluator `Limit` as `approve_<name>` and `reject_<name>` (number, or null: not checked), the kit's
  `dead_letter_share` among them (`Evaluator.checked_limits`);
- the data source's own params, and `extra_params`.

Airflow checks each param against its JSON Schema when a run is created (the trigger form, the
REST API, `dags test`), and has no hook for rules between params: the first task, `dataset`,
refuses a run whose conf names an unknown param (`check_conf`, which every DAG of this project
calls in its first task) or whose workload parameters contradict each other (the workload's
`validate`), before any data is generated or any Batch job is submitted.

NaN and Infinity: Python's JSON (the REST API's, the CLI's `--conf`) reads `NaN`, `Infinity` and
`-Infinity` as numbers, JSON Schema's `minimum`/`maximum` never refuse NaN, and Airflow 3.3 stores
the conf as given but hands it to tasks through its execution API as JSON, where both become `null`:
a task sees `None`, and a nullable param (a budget, a limit) would silently mean "none". So every
number param's schema also refuses them (`NOT_FINITE`, added by `dag_params`) when the run is
created; inside an object or list param the task sees `null`, and the checks there say "NaN or null
is not a number".
"""
from __future__ import annotations

import difflib
import inspect
import json
import math
import re
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable

from airflow.sdk import DAG, Asset, Param, task
from airflow.sdk.exceptions import ParamValidationError

from operators.kit.approval import REVIEW_KEY, ReviewApprovalOperator, review_request
from operators.kit.batch import run_shards
from operators.kit.evaluation import Evaluator
from operators.kit.notify import FailureNotifier
from operators.kit.shapes import (Decision, Evaluation, Fanout, Lineage, Prepared, RunInput, RunSummary, ShardPlan,
                                  ShardSummary)

QUEUES = ["airbatch-cpu", "airbatch-gpu"]
_MODEL_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")

#: Valid only for NaN, Infinity and -Infinity: a number param's schema says `"not": NOT_FINITE`. NaN passes every
#: comparison keyword (`nan < 0` and `nan > -1` are both false), so it alone satisfies minimum 0 AND maximum -1; the
#: infinities lie beyond the largest float. The description leads the schema, so that Airflow's "Invalid input for
#: param <name>: nan should not be valid under {...}" shows it first.
NOT_FINITE = {"description": "NaN, Infinity and -Infinity are not numbers: give a finite number", "type": "number",
              "anyOf": [{"minimum": 0, "maximum": -1}, {"exclusiveMinimum": sys.float_info.max},
                        {"exclusiveMaximum": -sys.float_info.max}]}


def stage(**task_kwargs: Any):
    """`@task` for a pipeline stage: its result is pushed as ONE XCom.

    Airflow reads a `-> dict` annotation as `multiple_outputs=True` and then also pushes every key of
    the dict as an XCom of its own: a request to the execution API and a row each, that nothing reads
    (68 in one run of a pipeline with an evaluator).
    """
    return task(multiple_outputs=False, **task_kwargs)


def kit_params(when_empty: str) -> dict[str, Param]:
    """The params every unit pipeline has (a fresh set per DAG: Param objects hold their value)."""
    return {
        "input_uri": Param(None, type=["string", "null"], minLength=1,
                           description="CSV/Parquet file or folder (local or s3://) under DATA_ROOT or "
                                       f"AIRBATCH_INPUT_PREFIXES, or athena://database.table; empty: {when_empty}"),
        "bucket_count": Param(3000, type="integer", minimum=1, maximum=10_000,
                              description="how many batches the units are hashed into; with rows_per_batch, "
                                          "the most"),
        "rows_per_batch": Param(0, type="integer", minimum=0, maximum=100_000_000,
                                description="target rows per batch: fewer batches than bucket_count when the "
                                            "rows are few (rows / target, up to a power of two); 0: exactly "
                                            "bucket_count"),
        "batches_per_shard": Param(1000, type="integer", minimum=1, maximum=10_000,
                                   description="batches per shard: one AWS Batch array job and one mapped task each"),
        "batches_per_child": Param(0, type="integer", minimum=0, maximum=10_000,
                                   description="batches per array child; 0: the environment's default "
                                               "(BATCH_MAX_CHILDREN)"),
        "queue": Param("airbatch-cpu", type="string", enum=QUEUES, description="the AWS Batch job queue"),
        "min_success_ratio": Param(1.0, type="number", minimum=0, maximum=1,
                                   description="a shard fails when a smaller share of its batches succeeds; the "
                                               "units of failed batches are dead-lettered"),
        "max_quarantined_share": Param(0.1, type="number", minimum=0, maximum=1,
                                       description="prepare fails when a larger share of the rows is quarantined"),
        "shard_timeout_minutes": Param(360, type="number", exclusiveMinimum=0, maximum=7 * 24 * 60,
                                       description="a shard still running then has its Batch job terminated"),
        "budget": Param(None, type=["number", "null"], minimum=0,
                        description="USD: plan fails before submitting anything when the estimate from the last "
                                    "comparable run (same DAG and queue, its cost per batch) exceeds it; empty: no "
                                    "limit"),
    }


def dag_params(params: Mapping[str, Param]) -> dict[str, Param]:
    """`params` as a DAG of this project declares them: every param that may be a number also refuses NaN and
    Infinity when a run is created (see the module docstring), naming the param."""
    out = {}
    for name, param in params.items():
        types = param.schema.get("type")
        if "number" in (types if isinstance(types, list) else [types]) and "not" not in param.schema:
            param = Param(param.value, description=param.description, schema={**param.schema, "not": NOT_FINITE})
        out[name] = param
    return out


def check_conf(dag_id: str, conf: Mapping[str, Any] | None, accepted: Iterable[str]) -> None:
    """Refuse a run whose conf names a param the DAG does not have, or holds NaN or Infinity.

    Airflow checks the params a DAG declares and keeps any other key of a run's conf without a word: a misspelt
    name (`repeat` for `repeats`) would run with the default. Every DAG's first task calls this, before anything
    is generated or submitted; the message names each unknown key, the closest accepted names and all of them.
    """
    accepted = sorted(accepted)
    unknown = sorted(set(conf or {}) - set(accepted))
    if unknown:
        raise ValueError(f"{dag_id}: unknown run param(s) {unknown}{did_you_mean(unknown, accepted)}; known: "
                         f"{accepted}. Correct or remove it: a key the DAG does not know would be ignored, and the "
                         "run would use the default instead")
    for name in sorted(conf or {}):
        for where, value in _non_finite(conf[name], name):
            raise ValueError(f"{dag_id}: run param {where!r} is {value}: NaN and Infinity are not numbers; give a "
                             "number")


def did_you_mean(unknown: Iterable[str], known: Iterable[str]) -> str:
    """The closest known name of each unknown one, as " (did you mean 'queue' for 'queu'?)"; "" when none is close."""
    known = list(known)
    hints = [f"{close[0]!r} for {name!r}" for name in unknown
             for close in [difflib.get_close_matches(name, known, n=1, cutoff=0.6)] if close]
    return f" (did you mean {', '.join(hints)}?)" if hints else ""


def _non_finite(value: Any, where: str):
    """(path, value) of every NaN or infinite float in a JSON value."""
    if isinstance(value, float) and not math.isfinite(value):
        yield where, value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from _non_finite(item, f"{where}.{key}")
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from _non_finite(item, f"{where}[{index}]")


def review_param() -> Param:
    return Param("auto", type="string", enum=["auto", "always"],
                 description="auto: a person decides only between the approve and reject limits; always: every "
                             "version")


def limit_params(limits) -> dict[str, Param]:
    """`approve_<name>` and `reject_<name>` for every limit: a level, or null to leave the limit unchecked."""
    params = {}
    for limit in limits:
        bound = "at most" if limit.direction == "max" else "at least"
        for kind, level in (("approve", limit.approve), ("reject", limit.reject)):
            effect = "approving needs" if kind == "approve" else "rejected unless"
            params[f"{kind}_{limit.name}"] = Param(
                level, type=["number", "null"],
                description=f"{limit.description}: {effect} {limit.name} {bound} this level; empty: not checked")
    return params


def workload_param(parameter) -> Param:
    schema = dict(parameter.json_schema())
    description = schema.pop("description", None) or parameter.description
    return Param(parameter.default, description=description, **schema)


class DataSource:
    """Where a run's input comes from. This default reads the `input_uri` param, which a run must then give."""

    #: What a run without `input_uri` reads (shown in the param's description).
    when_empty = "the run fails at its dataset task"

    def params(self) -> dict[str, Param]:
        return {}

    def resolve(self, params: dict[str, Any], run_root: str, data_interval_end) -> str:
        if not params.get("input_uri"):
            raise ValueError("input_uri is empty: give the run a CSV/Parquet file or folder (local or s3://) under "
                             "DATA_ROOT or AIRBATCH_INPUT_PREFIXES")
        return params["input_uri"]

    def window(self, params: dict[str, Any], data_interval_end) -> tuple[str, str] | None:
        """The [start, end) dates a run reads from its input; None: all of it."""
        return None


def run_interval(timetable, run_after, data_interval_start=None, data_interval_end=None) -> tuple[Any, Any]:
    """The (start, end) of the data a run covers.

    A run with a logical date (scheduled, backfilled, triggered with one, `airflow dags test DAG DATE`) has its
    data interval: that one. A run without a logical date has none: Airflow 3 creates such runs for
    `"logical_date": null` through the REST API (what the official client sends), for asset events and for
    `dag.test(logical_date=None)`, and leaves `logical_date`, `data_interval_start/end`, `ds` and `ts` out of
    their tasks' context. Such a run covers the interval Airflow infers for a manual run at its `run_after`
    (`timetable.infer_manual_data_interval`, what the REST API does for a run triggered with a logical date):
    for a cron or weekly schedule the last complete interval, ending at or before `run_after`; for a DAG
    without a schedule, or scheduled by assets only, the instant `run_after`.
    """
    if data_interval_end is not None:
        return data_interval_start if data_interval_start is not None else data_interval_end, data_interval_end
    if run_after is None:
        raise ValueError("the run has neither a data interval nor a run_after: no window can be given to it")
    import pendulum

    run_after = pendulum.instance(run_after)
    if timetable is not None:
        from airflow.serialization.encoders import coerce_to_core_timetable

        try:
            inferred = coerce_to_core_timetable(timetable).infer_manual_data_interval(run_after=run_after)
        except NotImplementedError:  # a custom timetable that infers nothing: the instant it runs
            pass
        else:
            return inferred.start, inferred.end
    return run_after, run_after


class LookbackWindow(DataSource):
    """A source whose runs read the `lookback_days` days before the end of their data interval."""

    def __init__(self, lookback_days: int = 28, minimum: int = 1, maximum: int = 730):
        self.lookback_days, self.minimum, self.maximum = lookback_days, minimum, maximum

    def params(self) -> dict[str, Param]:
        return {"lookback_days": Param(self.lookback_days, type="integer", minimum=self.minimum, maximum=self.maximum,
                                       description="the run reads the days [end - lookback_days, end) of its input, "
                                                   "where end is the end of its data interval (a run without a "
                                                   "logical date: of the interval its schedule gives its "
                                                   "run_after)")}

    def window(self, params: dict[str, Any], data_interval_end) -> tuple[str, str]:
        end = data_interval_end.date()
        return (end - timedelta(days=params["lookback_days"])).isoformat(), end.isoformat()


@dataclass(frozen=True)
class PublishTarget:
    """Where an approved version goes: `publish(model, version) -> uri` (default `registry.publish`), then an
    event on `asset` carrying the version and the uri."""

    asset: Asset
    publish: Callable[[str, str], str] | None = None

    def run(self, model: str, version: str) -> str:
        if self.publish is not None:
            return self.publish(model, version)
        from operators.kit import registry

        return registry.publish(model, version)


def shown_location(uri: str, root: str | None = None) -> str:
    """`uri` as people should see it: relative to DATA_ROOT when it lies there (worker paths differ per host)."""
    from operators.kit.engine import data_root

    root = (root or data_root()).rstrip("/")
    return f"DATA_ROOT/{uri[len(root) + 1:]}" if uri.startswith(root + "/") else uri


#: Arguments of Airflow's DAG that a unit pipeline sets itself: what to give instead.
SET_BY_THE_PIPELINE = {
    "params": "the params are generated (the kit's, the workload's, the data source's, the evaluator's limits): "
              "give their defaults in defaults= and params of the pipeline's own in extra_params=",
    "default_args": "the pipeline sets them: its on_failure_callback notifies every failed task",
}


@dataclass(frozen=True)
class PipelineOptions:
    """A unit pipeline's options as `unit_pipeline` takes them: its signature declares each one's type and default,
    its docstring what each means. `UnitPipeline` is configured by one."""

    workload: str
    evaluator: Evaluator | None
    model: str | None
    source: DataSource | None
    publish: PublishTarget | None
    notify: bool | None
    poll_interval: float
    defaults: Mapping[str, Any] | None
    extra_params: Mapping[str, Param] | None
    dag_kwargs: Mapping[str, Any]

    @classmethod
    def given(cls, dag_id: str, options: Mapping[str, Any]) -> PipelineOptions:
        """`options` as `unit_pipeline(dag_id, **options)` takes them, its defaults for those left out.

        A name that is neither an option nor an argument of Airflow's `DAG` is a TypeError naming the closest of
        either (DAG() itself would only say "unexpected keyword argument", and never name a pipeline option).
        """
        signature = inspect.signature(unit_pipeline)
        own = [name for name, p in signature.parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY]
        of_dag = [name for name in inspect.signature(DAG).parameters
                  if name != "dag_id" and name not in SET_BY_THE_PIPELINE]
        for name in sorted(set(options) & set(SET_BY_THE_PIPELINE)):
            raise TypeError(f"{dag_id}: unit_pipeline takes no {name}=: {SET_BY_THE_PIPELINE[name]}")
        unknown = sorted(set(options) - set(own) - set(of_dag))
        if unknown:
            raise TypeError(f"{dag_id}: unit_pipeline has no option {', '.join(map(repr, unknown))}"
                            f"{did_you_mean(unknown, own + of_dag)}; its options are {', '.join(own)}, and any "
                            "other keyword must be an argument of Airflow's DAG (schedule, start_date, tags, ...)")
        try:
            bound = signature.bind(dag_id, **options)
        except TypeError as error:  # workload= missing
            raise TypeError(f"{dag_id}: unit_pipeline {error}") from None
        bound.apply_defaults()
        return cls(**{name: value for name, value in bound.arguments.items() if name != "dag_id"})


class UnitPipeline:
    """The factory behind `unit_pipeline`: configuration, generated params, one method per stage, and `build()`.

    `UnitPipeline(dag_id, **options)` takes the options of `unit_pipeline` (see there); a subclass overrides a stage's
    method, and reads its options in `self.options`.
    """

    #: True where a window without rows is an ordinary day (a daily run over what was added since the last one):
    #: `prepare` then skips the rest of the run, which succeeds, instead of failing it. Rows in the window that
    #: were all quarantined still fail it. Only for pipelines without an evaluator (there is no version to decide).
    empty_window_skips = False

    #: Workload parameters a subclass sets at run time (e.g. a model version it resolves in a stage): not run
    #: params, so a run cannot set them; the subclass adds them to the params it passes to `plan`.
    runtime_workload_params: tuple[str, ...] = ()

    def __init__(self, dag_id: str, **options: Any):
        from batch_worker.workloads import get_workload

        self.options = given = PipelineOptions.given(dag_id, options)
        self.dag_id, self.workload_name, self.evaluator = dag_id, given.workload, given.evaluator
        self.workload = get_workload(given.workload)
        self.model = given.model or given.workload
        if self.evaluator is not None and not _MODEL_NAME.match(self.model):
            raise ValueError(f"{dag_id}: model {self.model!r} must be letters, digits, '_', '.' or '-'")
        if self.empty_window_skips and self.evaluator is not None:
            raise ValueError(f"{dag_id}: empty_window_skips needs a pipeline without an evaluator")
        if given.publish is not None and self.evaluator is None:
            raise ValueError(f"{dag_id}: a publish target needs an evaluator (only approved versions are published)")
        self.source = given.source or DataSource()
        self.target = given.publish
        # `notify`: the success summary task (on with an evaluator); failures are notified in every pipeline
        self.notify_enabled = self.evaluator is not None if given.notify is None else given.notify
        self.poll_interval = given.poll_interval
        self.dag_kwargs = dict(given.dag_kwargs)
        self.params = self.build_params(given.defaults or {}, given.extra_params or {})

    # --- params -------------------------------------------------------------------------------------------------
    def build_params(self, defaults: Mapping[str, Any], extra: Mapping[str, Param]) -> dict[str, Param]:
        groups = [("the kit", kit_params(self.source.when_empty))]
        if self.evaluator is not None:
            groups.append(("the kit", {"review": review_param()}))
        groups.append((f"workload {self.workload_name!r}",
                       {p.name: workload_param(p) for p in getattr(self.workload, "parameters", ())
                        if p.name not in self.runtime_workload_params}))
        groups.append((f"data source {type(self.source).__name__}", self.source.params()))
        if self.evaluator is not None:
            groups.append((f"evaluator {self.evaluator.name!r}", limit_params(self.evaluator.checked_limits())))
        groups.append(("extra_params", dict(extra)))
        params: dict[str, Param] = {}
        owner: dict[str, str] = {}
        for who, group in groups:
            for name, param in group.items():
                if name in params:
                    raise ValueError(f"{self.dag_id}: param {name!r} of {who} clashes with the param of {owner[name]}; "
                                     "rename one of them")
                if not param.description:
                    raise ValueError(f"{self.dag_id}: param {name!r} of {who} has no description; give it one")
                params[name], owner[name] = param, who
        unknown = sorted(set(defaults) - set(params))
        if unknown:
            raise ValueError(f"{self.dag_id}: defaults for unknown param(s) {unknown}; known: {sorted(params)}")
        for name, value in defaults.items():
            params[name] = Param(value, description=params[name].description, schema=params[name].schema)
            try:
                params[name].resolve()
            except ParamValidationError as err:
                raise ValueError(f"{self.dag_id}: the default {value!r} of param {name!r} is not allowed: "
                                 f"{str(err).splitlines()[0]}") from None
        return dag_params(params)

    def workload_params(self, params: dict[str, Any]) -> dict[str, Any]:
        return {p.name: params[p.name] for p in getattr(self.workload, "parameters", ()) if p.name in params}

    def check_run(self, params: dict[str, Any], conf: dict[str, Any] | None) -> dict[str, Any]:
        """Refuse what the params' JSON Schemas cannot: unknown names in the run's conf and contradictory
        workload parameters. Returns the resolved workload parameters."""
        check_conf(self.dag_id, conf, self.params)
        return self.workload.resolve_params(self.workload_params(params))

    # --- stages -------------------------------------------------------------------------------------------------
    def own_run_root(self, run_id: str) -> str:
        """The run's root (folder), claimed as this run's (`engine.own_run_root`)."""
        from operators.kit import engine

        return engine.own_run_root(self.dag_id, run_id)

    def dataset(self, params: dict[str, Any], conf: dict[str, Any] | None, run_id: str,
                data_interval_end) -> RunInput:
        started = time.time()
        self.check_run(params, conf)
        uri = self.source.resolve(params, self.own_run_root(run_id), data_interval_end)
        return {"uri": uri, "started_at": started}

    def prepare(self, source: RunInput, params: dict[str, Any], run_id: str, data_interval_end) -> Prepared:
        from operators.kit import engine, prep

        root = self.own_run_root(run_id)
        # A dataset stage may fix the window itself when it depends on more than the data interval.
        window = tuple(source["window"]) if source.get("window") else self.source.window(params, data_interval_end)
        out = f"{root}/prep"
        empty_window = None
        try:
            result = prep.prepare_configured(source["uri"], self.workload.schema, out, params["bucket_count"],
                                             window=window, storage_options=engine.options_for(out, "aws_default"),
                                             max_quarantined_share=params["max_quarantined_share"],
                                             rows_per_batch=params.get("rows_per_batch") or None,
                                             reuse_root=engine.data_root())
        except prep.EmptyWindow as empty:
            if not self.empty_window_skips:
                raise
            empty_window = empty
        if empty_window is not None:
            from operators.kit.runview import skip_rest_of_run

            # notified, and kept for the run's note and the run view, which say why the run is green and empty
            skip_rest_of_run(self.dag_id, run_id, "prepare", f"{empty_window}: nothing to do, the rest of the run is skipped")
        where = f" in the window [{window[0]}, {window[1]})" if window else ""
        if not result.rows_ok:
            raise ValueError(f"no usable rows{where} of {source['uri']} ({result.rows_in} rows read, "
                             f"{result.rows_quarantined} quarantined {result.quarantined_by_reason})")
        prepared = {**result.to_dict(), "run_root": root, "input_uri": source["uri"],
                    "window": list(window) if window else None, "started_at": source["started_at"]}
        if self.evaluator is not None:
            prepared["input_stats"] = self.evaluator.input_stats(prepared)
        print(f"{result.rows_ok} rows{where} of {result.units} units into {result.batches} batches; "
              f"{result.rows_quarantined} rows quarantined {result.quarantined_by_reason}")
        return prepared

    def plan(self, prepared: Prepared, params: dict[str, Any]) -> list[ShardPlan]:
        from operators.kit import cost, engine

        if params.get("budget") is not None:
            runs_folder = prepared["run_root"].rstrip("/").rsplit("/", 1)[0]
            last = cost.last_comparable_cost(runs_folder, params["queue"], exclude_run_dir=prepared["run_root"])
            print(cost.check_budget(params["budget"], prepared["batches"], last))
        shards = engine.plan_shards(
            prepared["manifest_uri"], workload=self.workload_name, params=self.workload_params(params),
            out_root=engine.output_root(self.workload_name), run_dir=prepared["run_root"], queue=params["queue"],
            batches_per_shard=params["batches_per_shard"], min_success_ratio=params["min_success_ratio"],
            batches_per_child=params["batches_per_child"] or None, timeout_minutes=params["shard_timeout_minutes"])
        print(f"{prepared['batches']} batches in {len(shards)} shard(s)")
        return shards

    def collect(self, shard_summaries: Iterable[ShardSummary], prepared: Prepared) -> Fanout:
        from operators.kit import cost, engine, runview

        summaries = list(shard_summaries)
        combined = engine.combine(summaries, unit_key=self.workload.schema.unit_key, run_dir=prepared["run_root"])
        combined["cost"] = cost.write_run_cost(summaries, prepared["run_root"])
        combined["note"] = runview.run_note(combined)
        print(combined["note"])
        return {"rows_in": prepared["rows_in"], "rows_quarantined": prepared["rows_quarantined"],
                "quarantined_by_reason": prepared["quarantined_by_reason"], **combined}

    def lineage(self, prepared: Prepared, fanout: Fanout, params: dict[str, Any], run_id: str,
                logical_date) -> Lineage:
        import os

        return {"dag_id": self.dag_id, "run_id": run_id,
                "logical_date": str(logical_date) if logical_date is not None else None,
                "window": prepared["window"], "input_uri": prepared["input_uri"], "workload": self.workload_name,
                "workload_version": self.workload.version,
                "workload_params": self.workload.resolve_params(self.workload_params(params)),
                "image": os.environ.get("WORKER_IMAGE", ""), "job_ids": fanout["job_ids"],
                "manifest": prepared["manifest_uri"], "cost": fanout.get("cost")}

    def evaluate(self, fanout: Fanout, prepared: Prepared, params: dict[str, Any], run_id: str, logical_date,
                 data_interval_end, data_interval_start=None) -> Evaluation:
        from operators.kit import registry
        from operators.kit.evaluation import evaluate_run, overrides_from_params

        # The version records its interval: it is compared with the version approved for the interval before it,
        # and never replaces a current version of a newer interval (a backfill).
        start = data_interval_start if data_interval_start is not None else data_interval_end

        result = evaluate_run(self.evaluator, model=self.model, fanout=fanout, prepared=prepared,
                              overrides=overrides_from_params(self.evaluator.checked_limits(), params),
                              review_always=params["review"] == "always",
                              lineage=self.lineage(prepared, fanout, params, run_id, logical_date),
                              version=registry.version_id(data_interval_end.isoformat(), run_id),
                              interval=(start.isoformat(), data_interval_end.isoformat()))
        result["report_location"] = shown_location(result["report"])
        from operators.kit.runview import run_view_path

        result["run_view"] = run_view_path(self.dag_id, run_id)
        return result

    def decide(self, evaluation: Evaluation, answer: dict[str, Any] | None) -> Decision:
        from operators.kit import engine, registry

        if answer:
            approved = answer["chosen_options"] == [ReviewApprovalOperator.APPROVE]
            by = f"person:{answer['user']}"
        else:
            approved, by = evaluation["proposal"] == "approve", "thresholds"
        status = registry.APPROVED if approved else registry.REJECTED
        record = registry.Registry(engine.data_root(), self.model).decide(evaluation["version"], status, by=by)
        decision: Decision = {"status": status, "by": by, "proposed": evaluation["proposal"],
                              "reasons": evaluation["reasons"]}
        if record.get("not_current"):  # approved, but a newer interval's version stays current: said in the notice
            decision["not_current"] = record["not_current"]
        return decision

    def publish(self, evaluation: Evaluation, decision: Decision) -> str:
        from airflow.sdk.exceptions import AirflowSkipException

        from operators.kit import registry

        if decision["status"] != registry.APPROVED:
            raise AirflowSkipException(f"version {evaluation['version']} was {decision['status']}: nothing to publish")
        return self.target.run(self.model, evaluation["version"])

    def notify(self, prepared: Prepared, fanout: Fanout, evaluation: Evaluation | None, decision: Decision | None,
               published: str | None, dag_id: str, run_id: str) -> RunSummary:
        from operators.kit import notify as notifications

        summary = {
            "dag_id": dag_id, "run_id": run_id, "window": prepared["window"],
            "duration_s": time.time() - prepared["started_at"],
            "rows_in": prepared["rows_in"], "rows_quarantined": prepared["rows_quarantined"],
            "quarantined_by_reason": prepared["quarantined_by_reason"],
            "fanout": {k: fanout.get(k) for k in ("batches", "shards", "units", "succeeded", "cached", "failed",
                                                  "units_computed", "units_cached", "units_failed", "dead_letter",
                                                  "failures_by_class", "first_errors", "cost")},
            "published": published,
        }
        if evaluation is not None:
            summary.update(version=evaluation["version"], metrics=evaluation["metrics"], lines=evaluation["lines"],
                           decision=decision, report=evaluation["report"])
        # Published before the notification, which then names the alarms' states (an alarm that changed state is
        # delivered on its own as well).
        summary["alarms"] = self.publish_metrics(
            {**summary, "comparison": (evaluation or {}).get("comparison")}, run_id, prepared.get("run_root"))
        summary["notification"] = notifications.notify_success(summary)
        return summary

    def publish_metrics(self, summary: dict[str, Any], run_id: str, run_root: str | None) -> dict[str, Any]:
        """The run's figures to CloudWatch (namespace and Pipeline=<dag_id>), its alarms' states (operators.kit.alarms).
        Called by the run's last summary stage: `notify`, or the collect step of a pipeline without one."""
        from operators.kit import alarms

        return alarms.publish_summary(self.dag_id, run_id, summary, run_root)

    # --- wiring -------------------------------------------------------------------------------------------------
    def build(self) -> DAG:
        pipeline = self
        # Every failed task notifies, with its whole error, whether or not the run sends a success summary
        # (`notify`): a pipeline without an evaluator (inference, units_of_work) fails as loudly as one with.
        default_args = {"on_failure_callback": FailureNotifier()}
        kwargs = {**self.dag_kwargs, "doc_md": (self.dag_kwargs.get("doc_md") or "") + params_doc(self.params)}
        with DAG(self.dag_id, params=self.params, default_args=default_args, **kwargs) as dag:

            # Every stage that needs the run's dates takes them from `interval_end`: a run without a logical date
            # has no data_interval_* in its context (see `run_interval`).
            @stage()
            def dataset(params=None, dag=None, dag_run=None, run_id=None, data_interval_start=None,
                        data_interval_end=None) -> RunInput:
                return pipeline.dataset(params, dag_run.conf if dag_run else None, run_id,
                                        interval_end(dag, dag_run, data_interval_start, data_interval_end))

            @stage()
            def prepare(source: RunInput, params=None, dag=None, dag_run=None, run_id=None, data_interval_start=None,
                        data_interval_end=None) -> Prepared:
                return pipeline.prepare(source, params, run_id,
                                        interval_end(dag, dag_run, data_interval_start, data_interval_end))

            @stage()
            def plan(prepared: Prepared, params=None) -> list[ShardPlan]:
                return pipeline.plan(prepared, params)

            @stage(task_id="collect" if self.evaluator is not None else "summary")
            def collect(shard_summaries: Iterable[ShardSummary], prepared: Prepared, run_id=None) -> Fanout:
                collected = pipeline.collect(shard_summaries, prepared)
                if not pipeline.notify_enabled:  # no notify stage: the run's figures are published here
                    collected["alarms"] = pipeline.publish_metrics(
                        {**collected, "duration_s": time.time() - prepared["started_at"]}, run_id,
                        prepared["run_root"])
                return collected

            prepared = prepare(dataset())
            fanout = collect(run_shards(plan(prepared), poll_interval=self.poll_interval).output, prepared)
            if self.evaluator is None:
                if self.notify_enabled:
                    self._notify_task(prepared, fanout, None, None)
                return dag

            @stage()
            def evaluate(fanout: Fanout, prepared: Prepared, params=None, run_id=None, logical_date=None, dag=None,
                         dag_run=None, data_interval_start=None, data_interval_end=None) -> Evaluation:
                start, end = run_interval(getattr(dag, "timetable", None), getattr(dag_run, "run_after", None),
                                          data_interval_start, data_interval_end)
                return pipeline.evaluate(fanout, prepared, params, run_id, logical_date, end,
                                         data_interval_start=start)

            @task.branch
            def gate(evaluation: Evaluation) -> str:
                return "ask_reviewer" if evaluation["proposal"] == "review" else "auto_decision"

            @stage(trigger_rule="none_failed")
            def decide(evaluation: Evaluation, ti=None) -> Decision:
                return pipeline.decide(evaluation, ti.xcom_pull(task_ids="ask_reviewer", key=REVIEW_KEY))

            evaluated = evaluate(fanout, prepared)
            decision = decide(evaluated)
            ask_reviewer = review_request(task_id="ask_reviewer", model=self.model, evaluate_task_id="evaluate")
            auto_decision = _empty("auto_decision")
            # A "Reject" skips the approval's direct downstream task: this one, so that `decide` still runs.
            reviewed = _empty("reviewed")
            gate(evaluated) >> [ask_reviewer, auto_decision]
            ask_reviewer >> reviewed
            [reviewed, auto_decision] >> decision
            published = None
            if self.target is not None:
                @stage(outlets=[self.target.asset])
                def publish(evaluation: Evaluation, decision: Decision, outlet_events=None) -> str:
                    uri = pipeline.publish(evaluation, decision)
                    outlet_events[pipeline.target.asset].extra = {"version": evaluation["version"], "uri": uri}
                    return uri

                published = publish(evaluated, decision)
            if self.notify_enabled:
                notified = self._notify_task(prepared, fanout, evaluated, decision)
                if published is not None:
                    published >> notified
        return dag

    def _notify_task(self, prepared, fanout, evaluated, decision):
        pipeline = self

        @stage(trigger_rule="none_failed")
        def notify(prepared: Prepared, fanout: Fanout, evaluation: Evaluation | None, decision: Decision | None,
                   ti=None) -> RunSummary:
            published = ti.xcom_pull(task_ids="publish") if pipeline.target is not None else None
            return pipeline.notify(prepared, fanout, evaluation, decision, published, ti.dag_id, ti.run_id)

        return notify(prepared, fanout, evaluated, decision)


def interval_end(dag, dag_run, data_interval_start, data_interval_end):
    """The end of the run's data interval, inferred from its DAG's schedule and run_after when it has none."""
    return run_interval(getattr(dag, "timetable", None), getattr(dag_run, "run_after", None), data_interval_start,
                        data_interval_end)[1]


def params_doc(params: dict[str, Param]) -> str:
    """The params table appended to a pipeline's doc_md: generated, so it never drifts from the params."""
    rows = [f"| `{name}` | `{json.dumps(param.value)}` | {cell(param.description)} |" for name, param in params.items()]
    return "\n\n**Params** (generated)\n\n| param | default | meaning |\n|---|---|---|\n" + "\n".join(rows) + "\n"


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _empty(task_id: str):
    from airflow.providers.standard.operators.empty import EmptyOperator

    return EmptyOperator(task_id=task_id)


def weekly_intervals(first_monday: str, *, catchup: bool = False) -> dict[str, Any]:
    """`schedule`, `start_date`, `catchup` and `max_active_runs` for weekly data intervals, Monday 00:00 UTC to
    Monday, one run at a time so that each week is compared with the version approved before it."""
    import pendulum

    from airflow.timetables.interval import CronDataIntervalTimetable

    start = pendulum.parse(first_monday, tz="UTC")
    if start.day_of_week != pendulum.MONDAY or start.time() != pendulum.time(0):
        raise ValueError(f"weekly_intervals: {first_monday!r} is not a Monday at 00:00 UTC")
    # Paused until someone turns the schedule on: a new stack runs nobody's catch-up by surprise.
    return {"schedule": CronDataIntervalTimetable("0 0 * * 1", timezone="UTC"), "start_date": start,
            "catchup": catchup, "max_active_runs": 1, "is_paused_upon_creation": True}


def unit_pipeline(dag_id: str, *, workload: str, evaluator: Evaluator | None = None, model: str | None = None,
                  source: DataSource | None = None, publish: PublishTarget | None = None, notify: bool | None = None,
                  poll_interval: float = 2, defaults: Mapping[str, Any] | None = None,
                  extra_params: Mapping[str, Param] | None = None, **dag_kwargs: Any) -> DAG:
    """Build the DAG `dag_id` of a unit pipeline (its stages: this module's docstring); every option is keyword-only.

    Options:
        workload: the name of the workload each batch runs (a @register'ed Workload or an airbatch.workloads entry)
        evaluator: judges each run's outputs by metrics and limits (an Evaluator); None: no evaluate, decide, publish
        model: the model registry's name for the versions (letters, digits, '_', '.', '-'); None: the workload's name
        source: where a run's input comes from (a DataSource); None: the input_uri param, which each run must give
        publish: where an approved version goes (a PublishTarget); None: approved versions are only registered
        notify: True: a notify stage sends the run's success summary; None: with an evaluator (failures always notify)
        poll_interval: seconds: the longest pause between two polls of a shard's AWS Batch job (the first are shorter)
        defaults: {param name: value}: new defaults of generated params (a run may still set them)
        extra_params: {name: Param}: run params of the pipeline's own, besides the generated ones, each described
        **dag_kwargs: Airflow DAG arguments: schedule, start_date, catchup, max_active_runs, doc_md, tags, ...

    An unknown option is a TypeError naming the closest one.
    """
    return UnitPipeline(dag_id, workload=workload, evaluator=evaluator, model=model, source=source, publish=publish,
                        notify=notify, poll_interval=poll_interval, defaults=defaults, extra_params=extra_params,
                        **dag_kwargs).build()
