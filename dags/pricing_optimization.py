"""
### pricing_optimization: a price per (segment, location, product), weekly, approved before it is used

1. **dataset**: the input. This is `input_uri` (CSV/Parquet, partitioned by `date=`), or, when
   that is empty, a synthetic dataset generated once under `DATA_ROOT/datasets/`:
   `dataset.rows` rows of `dataset.units` units from `dataset.start_date`. An empty start date
   makes the data end where the run's interval ends, so scheduled runs and backfills work out of
   the box.
2. **prepare**: the run's window: the `lookback_days` days before the end of its data interval
   (weekly, Monday to Monday). Validated against the pricing schema; bad rows are quarantined
   and counted. Units are bucketed into `bucket_count` batches.
3. **plan / run_shard**: one AWS Batch array job per shard on `queue` (GPU by default). Batches
   whose output exists for the same data, code version and `workload_params` are not recomputed.
4. **collect / evaluate**: evaluate computes metrics over all units (holdout MAPE, coverage,
   degenerate share, expected profit uplift, price changes, input size and shift). It compares
   them with the last approved version and proposes approve, reject or review against
   `thresholds`. It registers the version as PendingManualApproval and writes an HTML report.
5. **ask_reviewer**: a person approves or rejects in the Airflow UI (Required Actions) when the
   proposal is review, or always with `review: always`.
6. **decide / publish / notify**: the registry records the decision. An approved version's
   prices are written to `DATA_ROOT/published/pricing/current/` and to a versioned folder, and the
   Asset `pricing_current_prices` is updated. notify sends the summary (outbox; SNS/SMTP when
   configured). A failed task notifies with its first error and its failed units.

Backfill: `airflow backfill create --dag-id pricing_optimization --from-date A --to-date B`. Each
weekly interval reads its own window and registers its own version.
"""
from __future__ import annotations

import os
from datetime import timedelta

import pendulum

from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.sdk import Asset, Param, dag, task
from airflow.timetables.interval import CronDataIntervalTimetable

from operators.kit.approval import REVIEW_KEY, ReviewApprovalOperator
from operators.kit.batch import run_shards
from operators.kit.notify import FailureNotifier

WORKLOAD = "pricing"
MODEL = "pricing"
CURRENT_PRICES = Asset("pricing_current_prices")

_number = {"type": "number"}
_limits = {"type": "object", "additionalProperties": False, "properties": {
    name: _number for name in ("max_mape_p50", "min_coverage", "max_degenerate_share", "max_mape_p50_increase",
                               "max_input_shift", "max_dead_letter_share")}}


@dag(
    dag_id="pricing_optimization",
    schedule=CronDataIntervalTimetable("0 0 * * 1", timezone="UTC"),  # weekly windows, Monday to Monday
    start_date=pendulum.datetime(2026, 1, 5, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["pricing", "batch"],
    default_args={"on_failure_callback": FailureNotifier()},
    params={
        "input_uri": Param("", type="string", description="CSV/Parquet input partitioned by date=; empty: synthetic"),
        "dataset": Param({"rows": 4_200_000, "units": 100_000, "start_date": "", "seed": 0}, type="object",
                         additionalProperties=False, required=["rows", "units", "start_date", "seed"],
                         properties={"rows": {"type": "integer", "minimum": 10_000, "maximum": 50_000_000},
                                     "units": {"type": "integer", "minimum": 1, "maximum": 5_000_000},
                                     "start_date": {"type": "string", "pattern": "^([0-9]{4}-[0-9]{2}-[0-9]{2})?$"},
                                     "seed": {"type": "integer", "minimum": 0}},
                         description="the synthetic dataset used when input_uri is empty; an empty start_date "
                                     "makes it end where the run's data interval ends"),
        "lookback_days": Param(28, type="integer", minimum=7, maximum=730),
        "bucket_count": Param(3000, type="integer", minimum=1, maximum=10_000),
        "batches_per_shard": Param(1000, type="integer", minimum=1, maximum=10_000),
        "batches_per_child": Param(0, type="integer", minimum=0, maximum=10_000),
        "queue": Param("airbatch-gpu", type="string", enum=["airbatch-gpu", "airbatch-cpu"]),
        "workload_params": Param({"holdout_days": 7}, type="object", additionalProperties=False, properties={
            "half_life_days": {"type": "number", "exclusiveMinimum": 0},
            "holdout_days": {"type": "integer", "minimum": 1},
            "shrinkage": {"type": "number", "minimum": 0},
            "min_points": {"type": "integer", "minimum": 2},
            "min_price_ratio": {"type": "number", "exclusiveMinimum": 0},
            "max_price_ratio": {"type": "number", "exclusiveMinimum": 0},
            "max_change": {"type": "number", "minimum": 0, "maximum": 1},
            "margin_floor": {"type": "number", "minimum": 0}}),
        "thresholds": Param({}, type="object", additionalProperties=False,
                            properties={"approve": _limits, "reject": _limits},
                            description="limits over the defaults in operators/pipelines/pricing/evaluation.py"),
        "review": Param("auto", type="string", enum=["auto", "always"],
                        description="auto: a person decides only between the limits; always: every version"),
        "min_success_ratio": Param(1.0, type="number", minimum=0, maximum=1),
        "max_quarantined_share": Param(0.1, type="number", minimum=0, maximum=1,
                                       description="prepare fails when a larger share of the rows is quarantined"),
        "shard_timeout_minutes": Param(360, type="number", exclusiveMinimum=0, maximum=7 * 24 * 60,
                                       description="a shard still running then has its Batch job terminated"),
    },
)
def pricing_optimization():
    @task
    def dataset(params=None, data_interval_end=None) -> dict:
        import time

        from operators.pipelines.pricing import pricing_data
        from operators.kit.engine import data_root

        started = time.time()
        if params["input_uri"]:
            return {"uri": params["input_uri"], "started_at": started}
        spec = params["dataset"]
        start = spec["start_date"]
        if not start:  # as many days as rows/units make, ending the day before the interval ends
            _, days = pricing_data.plan(spec["rows"], spec["units"], None)
            start = (data_interval_end.date() - timedelta(days=days)).isoformat()
        uri = pricing_data.ensure(f"{data_root()}/datasets/pricing", rows=spec["rows"], units=spec["units"],
                                  start_date=start, seed=spec["seed"])
        return {"uri": uri, "started_at": started}

    @task
    def prepare(source: dict, params=None, dag=None, run_id=None, data_interval_end=None) -> dict:
        from batch_worker.workloads import get_workload

        from operators.kit import engine, prep
        from operators.pipelines.pricing import evaluation

        input_uri = source["uri"]
        end = data_interval_end.date()
        window = ((end - timedelta(days=params["lookback_days"])).isoformat(), end.isoformat())
        root = engine.own_run_root(dag.dag_id, run_id)
        out = f"{root}/prep"
        result = prep.prepare_configured(input_uri, get_workload(WORKLOAD).schema, out, params["bucket_count"],
                                         window=window, storage_options=engine.options_for(out, "aws_default"),
                                         max_quarantined_share=params["max_quarantined_share"])
        if not result.rows_ok:
            raise ValueError(f"no usable rows in the window [{window[0]}, {window[1]}) of {input_uri} "
                             f"({result.rows_in} rows in the window, {result.rows_quarantined} quarantined)")
        prepared = {**result.to_dict(), "run_root": root, "input_uri": input_uri, "window": list(window),
                    "started_at": source["started_at"]}
        prepared["input_stats"] = evaluation.input_stats(prepared, window)
        print(f"window [{window[0]}, {window[1]}): {result.rows_ok} rows of {result.units} units in "
              f"{result.batches} batches; {result.rows_quarantined} rows quarantined {result.quarantined_by_reason}")
        return prepared

    @task
    def plan(prepared: dict, params=None) -> list[dict]:
        from operators.kit import engine

        return engine.plan_shards(
            prepared["manifest_uri"], workload=WORKLOAD, params=params["workload_params"],
            out_root=engine.output_root(WORKLOAD), run_dir=prepared["run_root"], queue=params["queue"],
            batches_per_shard=params["batches_per_shard"], min_success_ratio=params["min_success_ratio"],
            batches_per_child=params["batches_per_child"] or None, timeout_minutes=params["shard_timeout_minutes"])

    @task
    def collect(shard_summaries, prepared: dict) -> dict:
        from batch_worker.workloads import get_workload

        from operators.kit import engine

        return engine.combine(list(shard_summaries), unit_key=get_workload(WORKLOAD).schema.unit_key,
                              run_dir=prepared["run_root"])

    @task
    def evaluate(fanout: dict, prepared: dict, params=None, dag=None, run_id=None, logical_date=None,
                 data_interval_end=None) -> dict:
        from batch_worker.workloads import get_workload

        from operators.kit import engine, registry
        from operators.pipelines.pricing import evaluation, report

        prices = engine.read_outputs(engine.output_uris(fanout["results"]))
        metrics = evaluation.metrics(prices, prepared["units"], fanout["units_failed"])
        models = registry.Registry(engine.data_root(), MODEL)
        previous = models.current()
        comparison = evaluation.compare(metrics, prepared["input_stats"], previous)
        proposal, reasons = evaluation.propose({**metrics, **comparison},
                                               evaluation.check_thresholds(params["thresholds"]))
        if params["review"] == "always" and proposal == "approve":
            proposal, reasons = "review", [*reasons, "review: always (run parameter)"]
        version = registry.version_id(data_interval_end.isoformat(), run_id)
        workload = get_workload(WORKLOAD)
        lineage = {"dag_id": dag.dag_id, "run_id": run_id, "logical_date": str(logical_date),
                   "window": prepared["window"], "input_uri": prepared["input_uri"], "workload": WORKLOAD,
                   "workload_version": workload.version,
                   "workload_params": workload.resolve_params(params["workload_params"]),
                   "image": os.environ.get("WORKER_IMAGE", ""), "job_ids": fanout["job_ids"],
                   "manifest": prepared["manifest_uri"]}
        version = models.register(version, metrics=metrics, input_stats=prepared["input_stats"], lineage=lineage,
                        proposed=proposal, reasons=reasons)["version"]
        folder = engine.location(models.version_dir(version))
        from batch_worker.runtime import parquet_bytes

        folder.write_bytes(folder.join("prices.parquet"), parquet_bytes(prices))
        report_uri = folder.join("report.html")
        folder.write_bytes(report_uri, report.render(
            title=f"Pricing evaluation, window {prepared['window'][0]} to {prepared['window'][1]}", version=version,
            proposal=proposal, reasons=reasons, metrics=metrics, comparison=comparison,
            input_stats=prepared["input_stats"], lineage=lineage, prices=prices).encode())
        print(f"version {version}: proposed {proposal} ({'; '.join(reasons)}); report {report_uri}")
        return {"version": version, "proposal": proposal, "reasons": reasons, "report": report_uri,
                "metrics": metrics, "comparison": comparison}

    @task.branch
    def gate(evaluation: dict) -> str:
        return "ask_reviewer" if evaluation["proposal"] == "review" else "auto_decision"

    ask_reviewer = ReviewApprovalOperator(
        task_id="ask_reviewer",
        subject="Approve pricing version {{ ti.xcom_pull(task_ids='evaluate')['version'] }}?",
        body="""Proposed: **{{ ti.xcom_pull(task_ids='evaluate')['proposal'] }}**, because
{% for r in ti.xcom_pull(task_ids='evaluate')['reasons'] %}- {{ r }}
{% endfor %}
{% set m = ti.xcom_pull(task_ids='evaluate')['metrics'] %}coverage {{ '%.3f' % m['coverage'] }},
median holdout MAPE {{ m['mape_p50'] }}, degenerate share {{ '%.3f' % m['degenerate_share'] }},
uplift {{ m['uplift_pct'] }}.

Report: {{ ti.xcom_pull(task_ids='evaluate')['report'] }}""",
        response_timeout=timedelta(days=3),
    )
    # A "Reject" skips the approval's direct downstream task: this one, so that `decide` still runs.
    reviewed = EmptyOperator(task_id="reviewed")
    auto_decision = EmptyOperator(task_id="auto_decision")

    @task(trigger_rule="none_failed")
    def decide(evaluation: dict, ti=None) -> dict:
        from operators.kit import engine, registry

        answer = ti.xcom_pull(task_ids="ask_reviewer", key=REVIEW_KEY)
        if answer:
            approved = answer["chosen_options"] == [ReviewApprovalOperator.APPROVE]
            by = f"person:{answer['user']}"
        else:
            approved, by = evaluation["proposal"] == "approve", "thresholds"
        status = registry.APPROVED if approved else registry.REJECTED
        registry.Registry(engine.data_root(), MODEL).decide(evaluation["version"], status, by=by)
        return {"status": status, "by": by, "proposed": evaluation["proposal"], "reasons": evaluation["reasons"]}

    @task(outlets=[CURRENT_PRICES])
    def publish(evaluation: dict, decision: dict, outlet_events=None) -> str:
        from airflow.sdk.exceptions import AirflowSkipException

        from operators.kit import engine, registry

        if decision["status"] != registry.APPROVED:
            raise AirflowSkipException(f"version {evaluation['version']} was {decision['status']}: nothing to publish")
        models = registry.Registry(engine.data_root(), MODEL)
        source = engine.location(models.version_dir(evaluation["version"]))
        prices = source.read_bytes(source.join("prices.parquet"))
        out = engine.location(f"{engine.data_root()}/published/{MODEL}")
        versioned = out.join("versions", evaluation["version"], "prices.parquet")
        current = out.join("current", "prices.parquet")
        out.write_bytes(versioned, prices)
        out.write_bytes(current, prices)  # atomic: readers see the old or the new file, never a mix
        out.write_json(out.join("current", "version.json"), {"version": evaluation["version"], "prices": versioned})
        outlet_events[CURRENT_PRICES].extra = {"version": evaluation["version"], "uri": current}
        return current

    @task(trigger_rule="none_failed")
    def notify(prepared: dict, fanout: dict, evaluation: dict, decision: dict, ti=None) -> dict:
        import time

        from operators.kit import notify as notifications

        published = ti.xcom_pull(task_ids="publish")
        summary = {
            "dag_id": ti.dag_id, "run_id": ti.run_id, "window": prepared["window"],
            "duration_s": time.time() - prepared["started_at"],
            "rows_in": prepared["rows_in"], "rows_quarantined": prepared["rows_quarantined"],
            "quarantined_by_reason": prepared["quarantined_by_reason"],
            "fanout": {k: fanout[k] for k in ("batches", "shards", "units", "succeeded", "cached", "failed",
                                              "units_failed", "dead_letter", "failures_by_class", "first_errors")},
            "version": evaluation["version"], "metrics": evaluation["metrics"], "decision": decision,
            "report": evaluation["report"], "published": published,
        }
        summary["notification"] = notifications.notify_success(summary)
        return summary

    source = dataset()
    prepared = prepare(source)
    shards = run_shards(plan(prepared), poll_interval=2)
    fanout = collect(shards.output, prepared)
    evaluated = evaluate(fanout, prepared)
    branch = gate(evaluated)
    decision = decide(evaluated)
    branch >> [ask_reviewer, auto_decision]
    ask_reviewer >> reviewed
    [reviewed, auto_decision] >> decision
    notify(prepared, fanout, evaluated, decision) << publish(evaluated, decision)


pricing_optimization()
