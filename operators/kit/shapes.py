"""The shapes of what a unit pipeline's stages hand each other, and of what an evaluator is given.

The stages pass plain dicts through XCom (JSON): these `TypedDict`s only name their keys and types,
for the people who read them (an evaluator's `metrics` and `compare`, a `DataSource`, a
`UnitPipeline` subclass that overrides a stage) and for type checkers. Nothing here is checked at
run time, and a subclass that adds keys declares its own shape on top of these (see
`operators.kit.pipeline`'s `UnitPipeline` and `operators.pipelines.packaging.inference`).

    dataset -> RunInput -> prepare -> Prepared -> plan -> [ShardPlan] -> run_shard -> ShardSummary (each)
            -> collect -> Fanout -> evaluate -> Evaluation -> decide -> Decision -> notify -> RunSummary

Imports nothing but `typing`: DAG files and evaluator modules import it at parse time. Its annotations are
evaluated (no `from __future__ import annotations`), so that `__required_keys__` and `__optional_keys__` hold
at run time too.
"""
from typing import Any, NotRequired, TypedDict

__all__ = ["RunInput", "Prepared", "ShardPlan", "ShardSummary", "Fanout", "LimitRow", "Lineage", "Evaluation",
           "NotCurrent", "Decision", "VersionRecord", "RunSummary"]


class RunInput(TypedDict):
    """What the `dataset` stage returns: the input the run reads."""

    uri: str  #: the input (`DataSource.resolve`): a CSV/Parquet file or folder, local or s3://, or athena://
    started_at: float  #: when the run's first stage started (seconds since the epoch): its duration's start
    window: NotRequired[list[str]]  #: [start, end) dates the dataset stage fixed itself; else the source's window


class Prepared(TypedDict):
    """What the `prepare` stage returns: prep's counts and files (`PrepResult`), and where the run lives."""

    out_uri: str  #: the folder prep wrote the batches under
    manifest_uri: str  #: the manifest: one row per batch (its id, file, rows, units and content hash)
    quarantine_uri: str | None  #: the quarantined rows with their reasons; None: none written
    rows_in: int  #: rows read from the input (in the window)
    rows_ok: int  #: rows that passed the schema's checks
    rows_quarantined: int  #: rows left out, each with its reason
    quarantined_by_reason: dict[str, int]  #: reason -> rows
    units: int  #: distinct unit keys among the rows kept
    batches: int  #: batches written (at most `bucket_count`)
    bucket_count: int  #: buckets the units were hashed into
    run_root: str  #: the run's own folder, DATA_ROOT/runs/<dag>/<run>
    input_uri: str  #: `RunInput.uri`
    window: list[str] | None  #: the [start, end) dates read; None: the whole input
    started_at: float  #: `RunInput.started_at`
    input_stats: NotRequired[dict[str, Any]]  #: `Evaluator.input_stats(prepared)`; only with an evaluator


class ShardPlan(TypedDict):
    """One entry of what the `plan` stage returns: the keyword arguments of one mapped `run_shard` task."""

    shard: dict[str, Any]  #: the shard's descriptor (`engine.ShardSpec` as a dict)
    job_queue: str  #: the AWS Batch job queue
    job_definition: str  #: the queue's job definition


class ShardSummary(TypedDict):
    """What one `run_shard` task returns: its batches' outcome (`engine.ShardOutcome.summary`)."""

    shard: int  #: the shard's index
    label: str  #: "shard <index>: batches <first>-<last>"
    workload: str  #: the workload's name
    batches: int  #: batches of the shard
    succeeded: int  #: batches computed by this shard's jobs
    cached: int  #: batches already done (an earlier run or try, same cache key)
    failed: int  #: batches without an output: their units are dead-lettered
    success_ratio: float  #: (succeeded + cached) / batches
    units: int  #: units of the shard's batches
    units_computed: int  #: units of the batches computed
    units_cached: int  #: units of the cached batches
    units_failed: int  #: units of the failed batches
    failed_batches: list[int]  #: ids of the failed batches (the first ones)
    failures_by_class: dict[str, int]  #: failure class -> batches
    first_errors: dict[str, str]  #: failure class -> its first error
    job_ids: list[str]  #: the AWS Batch jobs the shard submitted
    compute_s_per_batch: float | None  #: mean worker seconds of a computed batch; None: none computed
    wall_s: float  #: seconds the shard task took
    results: str  #: the shard's results file: every batch with its status and output
    capacity_shortages: list[dict[str, Any]]  #: waits for capacity the shard met
    throttled_submits: int  #: submissions AWS Batch throttled
    cost: dict[str, Any] | None  #: the shard's jobs costed when they ended; None: left to the collect step


class Fanout(TypedDict):
    """What the collect step returns (task `collect`, or `summary` in a pipeline without an evaluator): the run's
    shards added up (`engine.combine`), with prep's counts, the run's cost and its note."""

    rows_in: int  #: `Prepared.rows_in`
    rows_quarantined: int  #: `Prepared.rows_quarantined`
    quarantined_by_reason: dict[str, int]  #: `Prepared.quarantined_by_reason`
    batches: int  #: batches of the run
    succeeded: int  #: batches computed by the run's jobs
    cached: int  #: batches found done
    failed: int  #: batches without an output
    units: int  #: units of the run's batches
    units_computed: int  #: units of the batches computed
    units_cached: int  #: units of the cached batches
    units_failed: int  #: units dead-lettered (listed in `dead_letter`)
    shards: int  #: shards of the run
    success_ratio: float  #: (succeeded + cached) / batches
    failures_by_class: dict[str, int]  #: failure class -> batches
    first_errors: dict[str, str]  #: failure class -> its first error
    failed_batches: list[int]  #: ids of the failed batches (the first ones)
    job_ids: list[str]  #: every AWS Batch job of the run
    compute_s_per_batch: float | None  #: mean worker seconds of a computed batch
    results: list[str]  #: every shard's results file (what `engine.read_run_outputs` reads)
    dead_letter: str | None  #: the run's dead_letter.parquet; None: no unit failed
    cost: dict[str, Any]  #: the run's cost in USD (`cost.json` of the run's folder)
    note: str  #: the run's note, as the Airflow UI shows it
    alarms: NotRequired[dict[str, Any]]  #: the CloudWatch alarms' states, when no notify stage follows


class LimitRow(TypedDict):
    """One row of the limit table a version is decided on (`evaluation.limit_table`)."""

    name: str  #: the limit's name
    direction: str  #: "at most" or "at least"
    value: Any  #: the value checked; None: missing, not checked
    approve: float | None  #: the approve level applied; None: not checked
    reject: float | None  #: the reject level applied; None: not checked
    outcome: str  #: approve, review, reject, "not checked" or "no level set"
    description: str  #: what the limit measures


class Lineage(TypedDict):
    """Where a version comes from, recorded with it (`UnitPipeline.lineage`)."""

    dag_id: str
    run_id: str
    logical_date: str | None  #: None for a run without a logical date
    window: list[str] | None  #: the [start, end) dates read
    input_uri: str
    workload: str
    workload_version: str
    workload_params: dict[str, Any]  #: the workload parameters, resolved with their defaults
    image: str  #: the worker image (WORKER_IMAGE)
    job_ids: list[str]  #: the run's AWS Batch jobs
    manifest: str  #: `Prepared.manifest_uri`
    cost: dict[str, Any] | None  #: `Fanout.cost`


class Evaluation(TypedDict):
    """What `evaluation.evaluate_run` returns, and the `evaluate` stage with the run view's places."""

    version: str  #: the version registered (pending), `-rN` when its id was already decided
    proposal: str  #: approve, review or reject
    reasons: list[str]  #: why, one line each
    report: str  #: the version's report.html
    metrics: dict[str, Any]  #: `Evaluator.metrics`, with the kit's dead-letter values
    comparison: dict[str, Any]  #: `Evaluator.compare`
    lines: list[str]  #: `Evaluator.summary_lines`: what the notification and the approval page show
    artifact: str  #: the version's outputs file
    limits: list[LimitRow]  #: the limit table
    report_location: NotRequired[str]  #: `report`, relative to DATA_ROOT where it lies there
    run_view: NotRequired[str]  #: the run view's path in the Airflow UI


class NotCurrent(TypedDict):
    """Why an approved version did not become current."""

    current: str  #: the version that stays current
    reason: str


class Decision(TypedDict):
    """What the `decide` stage returns."""

    status: str  #: Approved or Rejected
    by: str  #: "thresholds", or "person:<user>"
    proposed: str  #: `Evaluation.proposal`
    reasons: list[str]  #: `Evaluation.reasons`
    not_current: NotRequired[NotCurrent]  #: approved, but a newer interval's version stays current


class VersionRecord(TypedDict):
    """A version's record in the model registry (`version.json`): what `Evaluator.compare` gets as `previous`."""

    model: str
    version: str
    status: str  #: PendingManualApproval, Approved or Rejected
    created_at: float  #: seconds since the epoch
    metrics: dict[str, Any]  #: `Evaluation.metrics`; a version evaluated before a metric was added lacks it
    input_stats: dict[str, Any]  #: `Evaluator.input_stats`
    lineage: Lineage
    artifact: str | None  #: the outputs' file name
    limits: list[LimitRow] | None  #: the limit table it was decided on (with `compare`'s values)
    proposed_decision: str  #: approve, review or reject
    decision_reasons: list[str]
    decided_by: str | None  #: "thresholds" or "person:<user>"; None while pending
    decided_at: float | None  #: seconds since the epoch; None while pending
    interval_start: str | None  #: its run's data interval (ISO 8601); None when registered without one
    interval_end: str | None
    decision_note: NotRequired[str]
    not_current: NotRequired[NotCurrent]  #: approved while a newer interval's version was current


class RunSummary(TypedDict):
    """What the `notify` stage returns and sends: the run's outcome."""

    dag_id: str
    run_id: str
    window: list[str] | None  #: `Prepared.window`
    duration_s: float  #: seconds from the run's first stage to its notification
    rows_in: int
    rows_quarantined: int
    quarantined_by_reason: dict[str, int]
    fanout: dict[str, Any]  #: the counts of `Fanout` a notification names (missing ones None)
    published: str | None  #: what the publish target returned; None: nothing published
    version: NotRequired[str]  #: with an evaluator: `Evaluation.version`
    metrics: NotRequired[dict[str, Any]]
    lines: NotRequired[list[str]]
    decision: NotRequired[Decision]
    report: NotRequired[str]
    alarms: dict[str, Any]  #: the CloudWatch alarms' states
    notification: dict[str, Any]  #: where it was sent: {"outbox": its file, "channels": [...]}
