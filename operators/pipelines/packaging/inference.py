"""Packaging inference on the kit: score the inventory with the latest approved model version, daily or monthly.

`PackagingInference` is a `UnitPipeline` with the `packaging_scoring` workload and no evaluator
(predictions are not approved; the model they use was). It overrides these stages:

- **dataset** resolves the latest **approved** version of `packaging` from the registry at run
  time (never a pending or rejected one; none yet: the run skips itself here, before any data is
  generated or any Batch job submitted, with a `skipped` notification and a run note saying why),
  checks that its artifact is published and readable (its Parquet footer and model columns: a
  damaged file fails here, naming file and version, not in every Batch job), and fixes the run's
  window:
  the whole inventory added before the run's day (`monthly`), or the products added since the
  last successful run (`daily`, see `daily_since`);
- **plan** passes the version and its artifact as the workload's run-time parameters, so both are
  part of every batch's cache key: the same inventory and model compute nothing again, a new model
  recomputes every batch;
- **collect** records the version in the run's summary; a **publish** task after it writes the
  predictions (Parquet) partitioned by run date, keeps the run's lineage, moves the scope's stable
  `current/` copy to them unless it holds a newer window (a backfilled older day never replaces newer
  predictions: `make_current`) and emits an event on the Asset `packaging_predictions`.

The run's day: the end of its data interval for a scheduled run; for a run without one (triggered
by a model approval, or by hand) the start of the day it runs.
"""
from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any, TypedDict

from airflow.sdk import DAG, Asset, Param

from operators.kit import DataSource, Fanout, Prepared, RunInput, ShardPlan, ShardSummary, UnitPipeline, stage

MODEL = "packaging"
SCOPES = ("daily", "monthly")
#: Updated with {"version", "scope", "run_date", "uri", "current", "made_current", "products"} (and "not_current"
#: when a newer window stays current) each time predictions are published.
PREDICTIONS = Asset("packaging_predictions")
#: The workload parameters the pipeline sets at run time from the registry.
MODEL_PARAMS = ("model_version", "model_uri")


class Inventory(DataSource):
    """`input_uri` (CSV/Parquet products), or the synthetic inventory (`inventory.ensure`) up to the run's day."""

    when_empty = ("the synthetic inventory (the dataset_* params) under DATA_ROOT/datasets/packaging_inventory, "
                  "up to the run's day")

    def params(self) -> dict[str, Param]:
        return {
            "dataset_groups": Param(1000, type="integer", minimum=1, maximum=100_000,
                                    description="product groups of the synthetic inventory; the same as the "
                                                "training labels' so that every group has its models"),
            "dataset_products_per_group": Param(200, type="integer", minimum=1, maximum=100_000,
                                                description="products of each group on dataset_start_date"),
            "dataset_new_products_per_day": Param(20, type="integer", minimum=0, maximum=10_000_000,
                                                  description="products added every day after dataset_start_date"),
            "dataset_start_date": Param("2025-07-07", type="string", format="date",
                                        description="the day (YYYY-MM-DD) of the initial inventory; later days "
                                                    "add products"),
            "dataset_seed": Param(0, type="integer", minimum=0, maximum=2**31 - 1,
                                  description="seed of the synthetic inventory (the training labels' seed gives "
                                              "their products)"),
        }

    def resolve(self, params: dict[str, Any], run_root: str, data_interval_end) -> str:
        if params.get("input_uri"):
            return params["input_uri"]
        from operators.kit import data_root, options_for
        from operators.pipelines.packaging import inventory

        root = f"{data_root()}/datasets/packaging_inventory"
        return inventory.ensure(
            root, until=data_interval_end.date().isoformat(), groups=params["dataset_groups"],
            products_per_group=params["dataset_products_per_group"],
            new_per_day=params["dataset_new_products_per_day"], start_date=params["dataset_start_date"],
            seed=params["dataset_seed"], storage_options=options_for(root, "aws_default"))


class ApprovedModel(TypedDict):
    """The model version a run scores with (`approved_model`)."""

    version: str  #: its version id in the registry
    uri: str  #: its published artifact (models.parquet)
    approved_at: float | None  #: seconds since the epoch
    approved_by: str | None  #: "thresholds" or "person:<user>"


class ScoringInput(RunInput):
    """What this pipeline's `dataset` returns: the kit's, with the window it fixes and the model it scores with."""

    model: ApprovedModel


class ScoringPrepared(Prepared):
    """What this pipeline's `prepare` returns."""

    model: ApprovedModel
    scope: str  #: daily or monthly


class ScoringFanout(Fanout):
    """What this pipeline's collect step (`summary`) returns."""

    model_version: str
    scope: str
    window: list[str] | None


class NoApprovedModel(RuntimeError):
    """There is no approved version to score with: nothing is computed."""


class NoModelYet(NoApprovedModel):
    """No version was ever approved: an ordinary state before the first training, so the run skips itself."""


def approved_model(root: str | None = None) -> ApprovedModel:
    """The latest approved version of `packaging` and its published artifact; NoModelYet when none was ever
    approved; NoApprovedModel when its artifact is missing or cannot be read (its Parquet footer and columns are
    checked here, so that a damaged file fails the run's first task, by name, instead of every Batch job)."""
    from batch_worker.workloads import BadData
    from batch_worker.workloads.packaging_scoring import artifact_path, check_model_artifact

    from operators.kit import engine, registry

    root = root or engine.data_root()
    record = registry.Registry(root, MODEL).current()
    if record is None:
        raise NoModelYet(
            f"no approved version of model {MODEL!r} yet: this DAG runs by itself when one is approved. Nothing was "
            f"scored and no Batch job was submitted. To get one, run packaging_training: its version is approved "
            f"within its limits, or by a person under Required Actions in the Airflow UI "
            f"(DATA_ROOT/registry/{MODEL} has no approved version)")
    if record["status"] != registry.APPROVED:
        raise NoApprovedModel(f"the registry's current version {record['version']} of {MODEL!r} is "
                              f"{record['status']}, not {registry.APPROVED}: nothing was scored")
    uri = artifact_path(root, record["version"])
    if not engine.location(uri).fs.exists(uri):
        raise NoApprovedModel(f"version {record['version']} of {MODEL!r} is approved but its artifact "
                              f"DATA_ROOT/published/{MODEL}/versions/{record['version']}/models.parquet is missing: "
                              "clear the publish task of the packaging_training run that approved it")
    shown = f"DATA_ROOT/published/{MODEL}/versions/{record['version']}/models.parquet"
    try:
        check_model_artifact(uri, record["version"], shown=shown)
    except BadData as exc:
        raise NoApprovedModel(
            f"{MODEL!r} {exc}: nothing was scored and no Batch job was submitted. Publish the version again from "
            f"the registry's copy (clear the publish task of the packaging_training run that approved it), or "
            f"approve a newer version. The file itself: {uri}") from None
    return {"version": record["version"], "uri": uri, "approved_at": record.get("decided_at"),
            "approved_by": record.get("decided_by")}


def predictions_root(scope: str, root: str | None = None) -> str:
    from operators.kit import data_root

    return f"{root or data_root()}/predictions/{MODEL}/{scope}"


def run_day(data_interval_end, run_after) -> dt.date:
    """The day a run scores up to (exclusive): its data interval's end, else the start of the day it runs."""
    return (data_interval_end or run_after).date()


def daily_since(until: dt.date, previous_success_end, published: list[dict[str, Any]]) -> dt.date:
    """Where a daily run ending at `until` starts: the latest end, before `until`, of a successful earlier run.

    Two sources, because Airflow's `prev_data_interval_end_success` knows only scheduled runs (a run
    triggered by an asset has no data interval): that value, and the windows the scope's published
    runs recorded. Ends at or after `until` (this run itself, cleared and run again, or a later
    one) are ignored, so a re-run scores the same products again (and finds them cached). Without
    any earlier run: the day before `until`.
    """
    ends = [dt.date.fromisoformat(record["window"][1]) for record in published if record.get("window")]
    if previous_success_end:  # Airflow's lazy proxy: "is not None" holds even when it wraps None
        ends.append(previous_success_end.date())
    earlier = [end for end in ends if end < until]
    return max(earlier) if earlier else until - dt.timedelta(days=1)


def published_runs(scope: str, root: str | None = None) -> list[dict[str, Any]]:
    from operators.kit import location

    runs = location(f"{predictions_root(scope, root)}/runs")
    paths = runs.list_files(runs.uri)
    return [runs.read_json(path) for path in paths if path.endswith(".json")]


def window_end(record: dict[str, Any] | None) -> dt.date | None:
    """The end (exclusive day) of the window a published run's lineage records; None when it records none."""
    window = (record or {}).get("window")
    return dt.date.fromisoformat(window[1]) if window else None


def why_not_current(mine: dict[str, Any], current: dict[str, Any] | None) -> str | None:
    """Why a run's predictions (`mine`, its lineage) must not replace `current` (`current/run.json`), or None when
    they may.

    The registry's rule for versions, applied to predictions: `current/` moves only to a window that ends no
    earlier than the current one's. A backfilled older day is kept under `run_date=<day>/` and never replaces
    newer predictions; the same day run again (a re-run, a newer model) replaces them. A `current/run.json`
    without a window (written before windows were recorded) is replaced."""
    theirs, ours = window_end(current), window_end(mine)
    if theirs is None or ours is None or ours >= theirs:
        return None
    return (f"its window ends {ours.isoformat()}, before the current predictions' ({theirs.isoformat()}, run "
            f"{current.get('run_id')}): an older day (a backfill, or a cleared older run) never replaces newer "
            f"predictions. Its predictions are under run_date={ours.isoformat()}/ only")


def make_current(out, lineage: dict[str, Any], data: bytes) -> dict[str, Any] | None:
    """Make `data` (the run's predictions) and `lineage` the scope's `current/` unless `why_not_current` refuses;
    returns None when they are current, else {"current_run", "current_window", "reason"}.

    `current/run.json` is the pointer: written with a compare-and-swap (operators.kit.conditional: an ETag
    condition on S3, a lock and a rename locally) from the state the rule was checked against, after
    `current/predictions.parquet` (each file replaced whole). When another run's pointer lands between the check
    and the write, the check is made again against it; a run that then finds a newer window current copies that
    run's predictions back over the ones it wrote, so `current/` ends with the pointer's own predictions."""
    import json

    from operators.kit import conditional

    pointer, predictions = out.join("current", "run.json"), out.join("current", "predictions.parquet")
    mine = json.dumps(lineage, indent=1, sort_keys=True, default=str).encode()
    wrote = False
    for _ in range(conditional.UPDATE_ATTEMPTS):
        snapshot = conditional.read(out, pointer)
        current = json.loads(snapshot.data) if snapshot.data is not None else None
        reason = why_not_current(lineage, current)
        if reason is not None:
            if wrote:  # ours went over the newer run's predictions before its pointer landed: put its back
                _restore_current(out, pointer, predictions)
            return {"current_run": current.get("run_id"), "current_window": current.get("window"), "reason": reason}
        out.write_bytes(predictions, data)
        wrote = True
        try:
            conditional.write_if_unchanged(out, snapshot, mine)
            return None
        except conditional.Conflict:
            continue
    raise RuntimeError(f"{pointer}: {conditional.UPDATE_ATTEMPTS} runs in a row published to current/ while this "
                       "one did; its predictions are under run_date=/; clear its publish task once it is quiet")


def _restore_current(out, pointer: str, predictions: str) -> None:
    """Copy the predictions `current/run.json` names (its `uri`) to `current/predictions.parquet`, until the pointer
    is the same before and after the copy."""
    from operators.kit import conditional

    for _ in range(conditional.UPDATE_ATTEMPTS):
        before = conditional.read(out, pointer)
        named = json_of(before.data).get("uri")
        if not named:
            return
        out.write_bytes(predictions, out.read_bytes(named))
        if conditional.read(out, pointer).tag == before.tag:
            return
    raise RuntimeError(f"{pointer} kept changing while its predictions were copied to {predictions}; clear this "
                       "run's publish task once it is quiet")


def json_of(data: bytes | None) -> dict[str, Any]:
    import json

    return json.loads(data) if data else {}


class PackagingInference(UnitPipeline):
    """Score the inventory (`daily`: products added since the last successful run; `monthly`: all of it)."""

    runtime_workload_params = MODEL_PARAMS

    def __init__(self, dag_id: str, *, scope: str, **options: Any):
        if scope not in SCOPES:
            raise ValueError(f"{dag_id}: scope must be one of {SCOPES}, got {scope!r}")
        self.scope = scope
        self.empty_window_skips = scope == "daily"  # a day without new products has nothing to score
        super().__init__(dag_id, workload="packaging_scoring", source=Inventory(), **options)

    def dataset(self, params: dict[str, Any], conf: dict[str, Any] | None, run_id: str,
                data_interval_end) -> ScoringInput:
        from airflow.sdk import get_current_context

        self.check_run(params, conf)  # the run's conf first: a misspelt param is named before the model is looked at
        try:
            model = approved_model()
        except NoModelYet as none:
            # Before the first approval a scheduled run has nothing to score with: not a failure (a red run on a
            # new deployment would say something broke); the run skips itself, its note and notification say why.
            # A damaged or missing artifact of an approved version still fails (NoApprovedModel).
            from operators.kit import skip_rest_of_run

            skip_rest_of_run(self.dag_id, run_id, "dataset", str(none))
        context = get_current_context()
        until = run_day(context.get("data_interval_end"), context["dag_run"].run_after)
        if self.scope == "monthly":
            since = dt.date(1970, 1, 1)
        else:
            since = daily_since(until, context.get("prev_data_interval_end_success"), published_runs(self.scope))
        end = dt.datetime.combine(until, dt.time(), tzinfo=dt.timezone.utc)
        source = super().dataset(params, conf, run_id, end)
        print(f"scoring with {MODEL} version {model['version']} (approved by {model['approved_by']}), "
              f"products added in [{since}, {until})")
        return {**source, "window": [since.isoformat(), until.isoformat()], "model": model}

    def prepare(self, source: ScoringInput, params: dict[str, Any], run_id: str,
                data_interval_end) -> ScoringPrepared:
        return {**super().prepare(source, params, run_id, data_interval_end), "model": source["model"],
                "scope": self.scope}

    def model_params(self, prepared: ScoringPrepared) -> dict[str, Any]:
        return {"model_version": prepared["model"]["version"], "model_uri": prepared["model"]["uri"]}

    def plan(self, prepared: ScoringPrepared, params: dict[str, Any]) -> list[ShardPlan]:
        return super().plan(prepared, {**params, **self.model_params(prepared)})

    def collect(self, shard_summaries: Iterable[ShardSummary], prepared: ScoringPrepared) -> ScoringFanout:
        return {**super().collect(shard_summaries, prepared), "model_version": prepared["model"]["version"],
                "window": prepared["window"], "scope": self.scope}

    def publish_predictions(self, fanout: ScoringFanout, prepared: ScoringPrepared, params: dict[str, Any],
                            run_id: str, logical_date) -> dict[str, Any]:
        """Write the run's predictions under `predictions/packaging/<scope>/`; returns the Asset event's extra."""
        import io

        import pyarrow.dataset as ds
        import pyarrow.parquet as pq
        from batch_worker.workloads import get_workload

        from operators.kit import engine

        if fanout["failed"]:
            raise RuntimeError(f"{fanout['failed']} of {fanout['batches']} batches failed "
                               f"({fanout['failures_by_class']}; first errors {fanout['first_errors']}): the "
                               "predictions are incomplete and were not published; clear the failed shard tasks")
        outputs = engine.output_uris(fanout["results"])
        out = engine.location(predictions_root(self.scope))
        read_from = out if out.remote else None
        table = ds.dataset([u.removeprefix("s3://") for u in outputs], format="parquet",
                           filesystem=read_from.fs if read_from else None,
                           schema=get_workload(self.workload_name).output.arrow_schema()).to_table()
        buffer = io.BytesIO()
        pq.write_table(table, buffer)
        data = buffer.getvalue()
        run_date = prepared["window"][1]
        name = engine.safe_name(run_id)
        dated = out.join(f"run_date={run_date}", f"{name}.parquet")
        out.write_bytes(dated, data)
        lineage = {**self.lineage(prepared, fanout, {**params, **self.model_params(prepared)}, run_id, logical_date),
                   "scope": self.scope, "model": prepared["model"], "products": table.num_rows, "uri": dated,
                   "cached_batches": fanout["cached"], "batches": fanout["batches"]}
        out.write_json(out.join("runs", f"{name}.json"), lineage)
        print(f"{table.num_rows} predictions of version {prepared['model']['version']} to {dated}")
        not_current = make_current(out, lineage, data)
        extra = {"version": prepared["model"]["version"], "scope": self.scope, "run_date": run_date, "uri": dated,
                 "current": out.join("current", "predictions.parquet"), "made_current": not_current is None,
                 "products": table.num_rows}
        if not_current is None:
            print(f"current/ now holds this run's predictions (window {prepared['window'][0]} to {run_date})")
        else:
            extra["not_current"] = not_current
            print(f"published to {dated} only, not made current (current stays the run "
                  f"{not_current['current_run']}): {not_current['reason']}")
        return extra

    def build(self) -> DAG:
        dag = super().build()
        pipeline = self
        with dag:
            @stage(outlets=[PREDICTIONS])
            def publish(fanout: ScoringFanout, prepared: ScoringPrepared, params=None, run_id=None,
                        logical_date=None, outlet_events=None) -> dict[str, Any]:
                extra = pipeline.publish_predictions(fanout, prepared, params, run_id, logical_date)
                outlet_events[PREDICTIONS].extra = extra
                return extra

            publish(dag.get_task("summary").output, dag.get_task("prepare").output)
        return dag


#: When each scope runs besides a model approval: daily at midnight UTC, monthly on the 1st.
CRONS = {"daily": "0 0 * * *", "monthly": "0 0 1 * *"}


def asset_or_time(scope: str, start_date: str) -> dict[str, Any]:
    """`schedule` (the scope's cron, or an event on the training DAG's `packaging_models` Asset: an approval),
    `start_date`, no catchup and one run at a time (a daily run starts where the last successful one ended)."""
    import pendulum
    from airflow.sdk import AssetOrTimeSchedule, CronDataIntervalTimetable

    from operators.pipelines.packaging.source import CURRENT_MODELS

    return {"schedule": AssetOrTimeSchedule(timetable=CronDataIntervalTimetable(CRONS[scope], timezone="UTC"),
                                            assets=CURRENT_MODELS),
            "start_date": pendulum.parse(start_date, tz="UTC"), "catchup": False, "max_active_runs": 1,
            "is_paused_upon_creation": True}  # paused until someone turns the schedule on


def inference_pipeline(dag_id: str, *, scope: str, start_date: str = "2026-01-01", **options: Any) -> DAG:
    """A packaging inference DAG of `scope`, scheduled by time or by a model approval."""
    return PackagingInference(dag_id, scope=scope, **asset_or_time(scope, start_date), **options).build()


def register_approved_models(models, version: str, *, by: str, root: str | None = None) -> str:
    """Register `models` (a `packaging` artifact's rows) as an approved, published version; returns its version.

    What a training run's evaluate, decide and publish do, for benchmarks and tests that need a
    known model without training one."""
    from batch_worker.runtime import parquet_bytes

    from operators.kit import engine, registry

    store = registry.Registry(root or engine.data_root(), MODEL)
    record = store.register(version, metrics={}, input_stats={}, lineage={"registered_by": by}, proposed="approve",
                            reasons=[], artifact="models.parquet")
    folder = engine.location(store.version_dir(record["version"]))
    folder.write_bytes(folder.join("models.parquet"), parquet_bytes(models))
    store.decide(record["version"], registry.APPROVED, by=by)
    store.publish(record["version"])
    return record["version"]
