"""Run metrics in CloudWatch, and the alarms on them.

Every run of a unit pipeline publishes its figures to CloudWatch, namespace `airbatch` (the spec's
`alarms.namespace`), one dimension `Pipeline=<dag_id>`, through the `aws_default` connection:

    RunFailed          1 when a task of the run failed (its failure callback), 0 when the run ended
    BatchesDone        batches computed by this run            (Count)
    BatchesCached      batches whose output was already there  (Count)
    BatchesFailed      batches that failed                     (Count)
    UnitsDeadLettered  units of failed batches                 (Count)
    QuarantinedShare   rows quarantined / rows read            (None: a share, 0 to 1)
    DurationSeconds    the run's wall time up to its last stage (Seconds)
    CostUSD            the run's estimated Batch cost          (None)
    <metric>           every number the evaluator computed or compared with the last approved version
                       (its metrics and their changes against it), under its own name

Alarms are declared per pipeline in `config/batch_resources.json` (`alarms`: the ones every listed pipeline gets,
and each pipeline's own), and `python -m operators.kit.provisioning apply` creates them with `put_metric_alarm`,
their actions the SNS topic `airbatch-alarms` it also creates.

On AWS CloudWatch evaluates each alarm and publishes its state changes to the topic by itself. The local endpoint
(moto) stores metrics and alarms but never evaluates an alarm, so there the kit does CloudWatch's part after it
published: it compares each published value with the alarm's threshold, sets the alarm's state with
`set_alarm_state` (so `describe_alarms` answers as on AWS) and, on a change, publishes the message CloudWatch would
to the alarm's actions and sends it through the notifiers (the outbox, NOTIFY_SNS_TOPIC_ARN, e-mail).

What a run published and its alarms' states are kept in the run folder (`alarms.json`) for the run view.
"""
from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Iterable

from operators.kit import batch_resources
from operators.kit.delivery import send

log = logging.getLogger(__name__)

DEFAULT_NAMESPACE = "airbatch"
DEFAULT_TOPIC = "airbatch-alarms"
DIMENSION = "Pipeline"
#: The run folder's record of what the run published and its alarms' states.
RECORD_FILE = "alarms.json"
#: The spec's words for CloudWatch's comparison operators.
COMPARISONS = {">": "GreaterThanThreshold", ">=": "GreaterThanOrEqualToThreshold", "<": "LessThanThreshold",
               "<=": "LessThanOrEqualToThreshold"}
STATISTICS = ("Maximum", "Minimum", "Average", "Sum", "SampleCount")
SPEC_WHERE = "config/batch_resources.json"
#: PutMetricData takes at most this many values per call (the limit older SDKs and moto keep).
VALUES_PER_CALL = 20


class AlarmSpecError(ValueError):
    pass


@dataclass(frozen=True)
class AlarmSpec:
    """One alarm on one metric of one pipeline."""

    pipeline: str
    key: str
    metric: str
    comparison: str
    threshold: float
    description: str
    statistic: str = "Maximum"
    period_s: int = 300
    evaluation_periods: int = 1

    @property
    def name(self) -> str:
        return f"airbatch-{self.pipeline}-{self.key}"

    def breaches(self, value: float) -> bool:
        return {">": value > self.threshold, ">=": value >= self.threshold, "<": value < self.threshold,
                "<=": value <= self.threshold}[self.comparison]

    def request(self, namespace: str, topic_arn: str | None) -> dict[str, Any]:
        """put_metric_alarm's arguments. Runs are days or weeks apart: a period without a value is not breaching."""
        actions = [topic_arn] if topic_arn else []
        return {"AlarmName": self.name, "AlarmDescription": self.description, "Namespace": namespace,
                "MetricName": self.metric, "Dimensions": [{"Name": DIMENSION, "Value": self.pipeline}],
                "Statistic": self.statistic, "Period": self.period_s, "EvaluationPeriods": self.evaluation_periods,
                "DatapointsToAlarm": self.evaluation_periods, "Threshold": float(self.threshold),
                "ComparisonOperator": COMPARISONS[self.comparison], "TreatMissingData": "notBreaching",
                "ActionsEnabled": True, "AlarmActions": actions, "OKActions": actions,
                "Tags": [{"Key": "project", "Value": "airbatch"}, {"Key": "pipeline", "Value": self.pipeline}]}


def settings(spec: dict[str, Any]) -> dict[str, Any]:
    section = spec.get("alarms") or {}
    return {"namespace": section.get("namespace") or DEFAULT_NAMESPACE, "topic": section.get("topic") or DEFAULT_TOPIC}


def alarm_specs(spec: dict[str, Any], pipeline: str | None = None) -> list[AlarmSpec]:
    """The alarms `spec["alarms"]` declares (of one pipeline, when given); AlarmSpecError naming the bad field."""
    section = spec.get("alarms") or {}
    every = section.get("every_pipeline") or {}
    found = []
    for dag_id, own in sorted((section.get("pipelines") or {}).items()):
        if pipeline is not None and dag_id != pipeline:
            continue
        if not isinstance(own, dict):
            raise AlarmSpecError(f"{SPEC_WHERE}: alarms.pipelines.{dag_id} must be an object of alarms (or {{}})")
        for key, entry in {**{k: v for k, v in every.items() if not k.startswith("_")},
                           **{k: v for k, v in own.items() if not k.startswith("_")}}.items():
            where = f"{SPEC_WHERE}: alarms.{'pipelines.' + dag_id if key in own else 'every_pipeline'}.{key}"
            if entry is None:  # a pipeline turns one of every_pipeline's alarms off with null
                continue
            found.append(_alarm(dag_id, key, entry, where))
    return found


def _alarm(dag_id: str, key: str, entry: Any, where: str) -> AlarmSpec:
    if not isinstance(entry, dict):
        raise AlarmSpecError(f"{where} must be an object with metric, comparison, threshold and description")
    missing = [f for f in ("metric", "comparison", "threshold", "description") if entry.get(f) in (None, "")]
    if missing:
        raise AlarmSpecError(f"{where}: give {', '.join(missing)}")
    unknown = sorted(set(entry) - {"metric", "comparison", "threshold", "description", "statistic", "period_s",
                                   "evaluation_periods"} - {k for k in entry if k.startswith("_")})
    if unknown:
        raise AlarmSpecError(f"{where}: unknown field(s) {unknown}")
    if entry["comparison"] not in COMPARISONS:
        raise AlarmSpecError(f"{where}.comparison is {entry['comparison']!r}: give one of {', '.join(COMPARISONS)}")
    threshold = entry["threshold"]
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not math.isfinite(threshold):
        raise AlarmSpecError(f"{where}.threshold is {threshold!r}: give a finite number")
    statistic = entry.get("statistic", "Maximum")
    if statistic not in STATISTICS:
        raise AlarmSpecError(f"{where}.statistic is {statistic!r}: give one of {', '.join(STATISTICS)}")
    period = entry.get("period_s", 300)
    if not isinstance(period, int) or period < 60 or period % 60:
        raise AlarmSpecError(f"{where}.period_s is {period!r}: CloudWatch takes a multiple of 60 seconds")
    periods = entry.get("evaluation_periods", 1)
    if not isinstance(periods, int) or periods < 1:
        raise AlarmSpecError(f"{where}.evaluation_periods is {periods!r}: give an integer of at least 1")
    return AlarmSpec(dag_id, key, str(entry["metric"]), entry["comparison"], float(threshold),
                     str(entry["description"]), statistic, period, periods)


# --- the figures of a run ----------------------------------------------------------------------------------------

def _finite(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)) and math.isfinite(value):
        return float(value)
    return None


def run_figures(summary: dict[str, Any], failed: bool = False) -> dict[str, tuple[float, str]]:
    """{metric name: (value, unit)} of a run from its summary (the notify stage's, or the collect step's result with
    the prepared counts), the evaluator's metrics and comparison among them."""
    fanout = summary.get("fanout") or summary
    figures: dict[str, tuple[float, str]] = {"RunFailed": (1.0 if failed else 0.0, "Count")}
    for name, key in (("BatchesDone", "succeeded"), ("BatchesCached", "cached"), ("BatchesFailed", "failed"),
                      ("UnitsDeadLettered", "units_failed")):
        if _finite(fanout.get(key)) is not None:
            figures[name] = (_finite(fanout.get(key)), "Count")
    rows_in = _finite(summary.get("rows_in"))
    if rows_in is not None:
        share = (_finite(summary.get("rows_quarantined")) or 0.0) / rows_in if rows_in else 0.0
        figures["QuarantinedShare"] = (share, "None")
    if _finite(summary.get("duration_s")) is not None:
        figures["DurationSeconds"] = (_finite(summary["duration_s"]), "Seconds")
    cost = (fanout.get("cost") or {}).get("cost") if isinstance(fanout.get("cost"), dict) else None
    if _finite(cost) is not None:
        figures["CostUSD"] = (_finite(cost), "None")
    for group in ("metrics", "comparison"):
        for name, value in (summary.get(group) or {}).items():
            if _finite(value) is not None and name not in figures:
                figures[str(name)[:255]] = (_finite(value), "None")
    return figures


# --- clients -----------------------------------------------------------------------------------------------------

# botocore's retries of a CloudWatch or SNS call (with its back-off between attempts)
RETRIES = {"max_attempts": 3, "mode": "standard"}


def clients(aws_conn_id: str = "aws_default"):
    """(cloudwatch, sns, local) through the Airflow connection; `local`: its endpoint is not AWS's (moto's)."""
    from botocore.config import Config

    from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook

    # A CloudWatch that does not answer must not hold a run's last stage for long.
    config = Config(connect_timeout=5, read_timeout=20, retries=RETRIES)
    made = []
    local = False
    for service in ("cloudwatch", "sns"):
        hook = AwsBaseHook(aws_conn_id=aws_conn_id, client_type=service, config=config)
        made.append(hook.get_client_type())
        endpoint = hook.conn_config.get_service_endpoint_url(service) or ""
        local = local or is_local_endpoint(endpoint)
    return made[0], made[1], local


def is_local_endpoint(endpoint: str | None) -> bool:
    """An endpoint URL that is not AWS's own: the local endpoint, whose CloudWatch does not evaluate alarms."""
    return bool(endpoint) and ".amazonaws.com" not in endpoint


# --- provisioning ------------------------------------------------------------------------------------------------

def provision(cloudwatch, sns, spec: dict[str, Any], changes: dict[str, list[str]]) -> str | None:
    """Create the alarms' SNS topic and every alarm of `spec`, idempotently; the topic's ARN (None: no alarms)."""
    alarms = alarm_specs(spec)
    if not alarms:
        return None
    wanted = settings(spec)
    # CreateTopic returns the existing topic's ARN when the name exists: idempotent by itself.
    existing_topics = {t["TopicArn"].rsplit(":", 1)[-1] for page in sns.get_paginator("list_topics").paginate()
                       for t in page.get("Topics", [])}
    topic_arn = sns.create_topic(Name=wanted["topic"], Tags=[{"Key": "project", "Value": "airbatch"}])["TopicArn"]
    changes["unchanged" if wanted["topic"] in existing_topics else "created"].append(f"sns-topic/{wanted['topic']}")
    current = {a["AlarmName"]: a for a in _describe(cloudwatch, [a.name for a in alarms])}
    for alarm in alarms:
        request = alarm.request(wanted["namespace"], topic_arn)
        have = current.get(alarm.name)
        if have is not None and _same_alarm(have, request):
            changes["unchanged"].append(f"alarm/{alarm.name}")
            continue
        cloudwatch.put_metric_alarm(**request)
        changes["created" if have is None else "updated"].append(f"alarm/{alarm.name}")
    return topic_arn


def _same_alarm(have: dict[str, Any], request: dict[str, Any]) -> bool:
    keys = ("AlarmDescription", "Namespace", "MetricName", "Statistic", "Period", "EvaluationPeriods", "Threshold",
            "ComparisonOperator", "TreatMissingData", "AlarmActions", "OKActions")
    dims = lambda d: sorted((x["Name"], x["Value"]) for x in d.get("Dimensions") or [])  # noqa: E731
    return all(have.get(k) == request.get(k) for k in keys) and dims(have) == dims(request)


def _describe(cloudwatch, names: list[str]) -> list[dict[str, Any]]:
    found = []
    for start in range(0, len(names), 100):  # DescribeAlarms takes up to 100 names
        found.extend(cloudwatch.describe_alarms(AlarmNames=names[start:start + 100]).get("MetricAlarms", []))
    return found


# --- publishing a run --------------------------------------------------------------------------------------------

def publish_run(dag_id: str, run_id: str, figures: dict[str, tuple[float, str]], *, run_root: str | None = None,
                spec: dict[str, Any] | None = None, aws_conn_id: str = "aws_default") -> dict[str, Any]:
    """Put the run's figures into CloudWatch; on the local endpoint evaluate the pipeline's alarms as CloudWatch would.

    Returns (and keeps in the run folder's alarms.json) what was published and each alarm's state."""
    spec = spec if spec is not None else batch_resources.load_spec()
    wanted = settings(spec)
    cloudwatch, sns, local = clients(aws_conn_id)
    now = datetime.now(timezone.utc)
    dimensions = [{"Name": DIMENSION, "Value": dag_id}]
    data = [{"MetricName": name, "Dimensions": dimensions, "Timestamp": now, "Value": value, "Unit": unit}
            for name, (value, unit) in sorted(figures.items())]
    for start in range(0, len(data), VALUES_PER_CALL):
        cloudwatch.put_metric_data(Namespace=wanted["namespace"], MetricData=data[start:start + VALUES_PER_CALL])
    alarms = alarm_specs(spec, dag_id)
    states = evaluate_locally(cloudwatch, sns, alarms, figures, dag_id, run_id, now) if local else \
        alarm_states(cloudwatch, alarms, figures)
    record = {"namespace": wanted["namespace"], "dimensions": {DIMENSION: dag_id}, "published_at": now.isoformat(),
              "metrics": {name: value for name, (value, _unit) in sorted(figures.items())},
              "evaluated_by": "the kit (the local endpoint does not evaluate alarms)" if local else "CloudWatch",
              "alarms": states}
    if run_root:
        from operators.kit.engine import location

        folder = location(run_root, aws_conn_id)
        folder.write_json(folder.join(RECORD_FILE), record)
    names = ", ".join(f"{s['name']} {s['state']}" for s in states) or "none declared"
    print(f"published {len(data)} metrics to CloudWatch {wanted['namespace']} {DIMENSION}={dag_id}; alarms: {names}")
    return record


def alarm_states(cloudwatch, alarms: list[AlarmSpec], figures: dict[str, tuple[float, str]] | None = None
                 ) -> list[dict[str, Any]]:
    """Each alarm's state as CloudWatch holds it (MISSING: not provisioned), with the value the run published."""
    have = {a["AlarmName"]: a for a in _describe(cloudwatch, [a.name for a in alarms])}
    out = []
    for alarm in alarms:
        found = have.get(alarm.name) or {}
        value = (figures or {}).get(alarm.metric)
        out.append({"name": alarm.name, "metric": alarm.metric, "comparison": alarm.comparison,
                    "threshold": alarm.threshold, "description": alarm.description,
                    "value": value[0] if value else None,
                    "state": found.get("StateValue", "MISSING"),
                    "reason": found.get("StateReason") if found else
                    "not provisioned: run `python -m operators.kit.provisioning apply`",
                    "updated": str(found.get("StateUpdatedTimestamp") or "")})
    return out


def evaluate_locally(cloudwatch, sns, alarms: list[AlarmSpec], figures: dict[str, tuple[float, str]], dag_id: str,
                     run_id: str, when: datetime) -> list[dict[str, Any]]:
    """CloudWatch's part on the local endpoint: each alarm whose metric the run published gets the state its value
    gives; a changed state is set with set_alarm_state and delivered (the alarm's actions, then the notifiers)."""
    have = {a["AlarmName"]: a for a in _describe(cloudwatch, [a.name for a in alarms])}
    for alarm in alarms:
        current = have.get(alarm.name)
        if current is None or alarm.metric not in figures:
            continue
        value = figures[alarm.metric][0]
        state = "ALARM" if alarm.breaches(value) else "OK"
        if state == current.get("StateValue"):
            continue
        verb = "crossed" if state == "ALARM" else "did not cross"
        reason = (f"Threshold Crossed: 1 datapoint [{value:g} ({when:%d/%m/%y %H:%M:%S})] {verb} the threshold "
                  f"({alarm.comparison} {alarm.threshold:g}) in run {run_id}")
        reason_data = json.dumps({"version": "1.0", "queryDate": when.isoformat(), "statistic": alarm.statistic,
                                  "period": alarm.period_s, "recentDatapoints": [value], "threshold": alarm.threshold,
                                  "run_id": run_id})
        cloudwatch.set_alarm_state(AlarmName=alarm.name, StateValue=state, StateReason=reason,
                                   StateReasonData=reason_data)
        deliver(sns, current, state, reason, when, dag_id, run_id, value)
    return alarm_states(cloudwatch, alarms, figures)


def alarm_message(alarm: dict[str, Any], old: str, new: str, reason: str, when: datetime) -> dict[str, Any]:
    """The JSON CloudWatch publishes to an alarm's SNS topic on a state change."""
    return {"AlarmName": alarm["AlarmName"], "AlarmDescription": alarm.get("AlarmDescription"),
            "AlarmArn": alarm.get("AlarmArn"), "NewStateValue": new, "NewStateReason": reason, "OldStateValue": old,
            "StateChangeTime": when.isoformat(), "Region": (alarm.get("AlarmArn") or "::::").split(":")[3],
            "Trigger": {"MetricName": alarm.get("MetricName"), "Namespace": alarm.get("Namespace"),
                        "Statistic": alarm.get("Statistic"), "Dimensions": alarm.get("Dimensions"),
                        "Period": alarm.get("Period"), "EvaluationPeriods": alarm.get("EvaluationPeriods"),
                        "ComparisonOperator": alarm.get("ComparisonOperator"), "Threshold": alarm.get("Threshold"),
                        "TreatMissingData": alarm.get("TreatMissingData")}}


def deliver(sns, alarm: dict[str, Any], new: str, reason: str, when: datetime, dag_id: str, run_id: str,
            value: float) -> None:
    """Publish a state change to the alarm's actions, as CloudWatch does, and through the notifiers."""
    old = alarm.get("StateValue") or "INSUFFICIENT_DATA"
    message = alarm_message(alarm, old, new, reason, when)
    subject = f'{new}: "{alarm["AlarmName"]}" ({dag_id})'[:99]
    targets = alarm.get("AlarmActions" if new == "ALARM" else "OKActions") or []
    for arn in targets:
        if arn.startswith("arn:aws:sns:"):
            sns.publish(TopicArn=arn, Subject=subject, Message=json.dumps(message))
    body = "\n".join([f"alarm {alarm['AlarmName']}: {old} -> {new}", f"why: {reason}",
                      f"metric {alarm.get('Namespace')} {alarm.get('MetricName')} {DIMENSION}={dag_id}: {value:g}",
                      f"run {run_id}"] + ([f"delivered to {', '.join(targets)}"] if targets else []))
    send("alarm", subject, body, {"dag_id": dag_id, "run_id": run_id, "alarm": message})


def publish_failure(dag_id: str, run_id: str, aws_conn_id: str = "aws_default") -> dict[str, Any] | None:
    """RunFailed = 1 for a run whose task failed (a failure callback); never raises: the failure's own notification
    must go out whatever CloudWatch says."""
    try:
        from operators.kit.engine import run_root_of

        return publish_run(dag_id, run_id, {"RunFailed": (1.0, "Count")}, run_root=run_root_of(dag_id, run_id),
                           aws_conn_id=aws_conn_id)
    except Exception as error:  # noqa: BLE001 - reported, never hiding the failure being notified
        log.warning("RunFailed metric of %s %s not published to CloudWatch: %s", dag_id, run_id, error)
        return None


def publish_summary(dag_id: str, run_id: str, summary: dict[str, Any], run_root: str | None) -> dict[str, Any]:
    """The success path: the run's figures published; an error is kept in the result (and said in the notification)
    rather than failing a run whose work is done."""
    started = time.monotonic()
    try:
        return publish_run(dag_id, run_id, run_figures(summary), run_root=run_root)
    except Exception as error:  # noqa: BLE001
        message = (f"metrics not published to CloudWatch ({type(error).__name__}: {error}); check the aws_default "
                   "connection and cloudwatch:PutMetricData, then clear this task")
        print(message)
        return {"error": message, "seconds": time.monotonic() - started}


def run_view_alarms(record: dict[str, Any] | None, aws_conn_id: str = "aws_default") -> dict[str, Any] | None:
    """The run's alarms.json for the run view, each alarm's state refreshed from CloudWatch when it answers (on AWS
    CloudWatch changes them after the run published); the recorded states otherwise, said so."""
    if not record or not record.get("alarms"):
        return record
    try:
        cloudwatch, _sns, _local = clients(aws_conn_id)
        live = {a["AlarmName"]: a for a in _describe(cloudwatch, [a["name"] for a in record["alarms"]])}
    except Exception as error:  # noqa: BLE001 - the page still shows what the run recorded
        return {**record, "live": False, "live_error": f"{type(error).__name__}: {error}"}
    alarms = []
    for alarm in record["alarms"]:
        now = live.get(alarm["name"])
        alarms.append({**alarm, "state": now["StateValue"], "reason": now.get("StateReason"),
                       "updated": str(now.get("StateUpdatedTimestamp") or "")} if now else alarm)
    return {**record, "alarms": alarms, "live": True}


def names(alarms: Iterable[AlarmSpec]) -> list[str]:
    return [alarm.name for alarm in alarms]
