"""Run metrics and alarms through the real local endpoint: the spec's alarms provisioned, figures published with the
pipeline's namespace and dimension, an alarm driven to ALARM and its SNS message delivered, the run view's states."""
from __future__ import annotations

import copy
import json
import time
import uuid

import boto3
import pytest

from operators.kit import alarms, batch_resources, provisioning
from operators.kit.provisioning import Settings


def sns_inbox(local_aws, topic_arn: str):
    """An SQS queue subscribed to `topic_arn`: what a subscriber of the alarms' topic receives."""
    sqs = boto3.client("sqs", **local_aws.client_kwargs)
    url = sqs.create_queue(QueueName=f"inbox-{uuid.uuid4().hex[:8]}")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    boto3.client("sns", **local_aws.client_kwargs).subscribe(TopicArn=topic_arn, Protocol="sqs", Endpoint=arn)

    def received(quiet_seconds: int = 2) -> list[dict]:
        """What arrived: read until a read finds nothing after the first message, or after `quiet_seconds` of
        nothing at all (the local endpoint delivers an alarm's message before set_alarm_state returns, so a
        message that was sent is waiting already)."""
        messages = []
        deadline = time.monotonic() + 10
        quiet_until = time.monotonic() + quiet_seconds
        while time.monotonic() < deadline:
            got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1).get("Messages", [])
            messages += [json.loads(m["Body"]) for m in got]
            if not got and (messages or time.monotonic() >= quiet_until):
                break
        return messages

    return received


def spec_with(pipeline: str, own: dict | None = None) -> dict:
    spec = copy.deepcopy(provisioning.load_spec())
    spec["alarms"]["pipelines"] = {pipeline: own or {}}
    return spec


def outbox(data_root) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((data_root / "outbox").glob("*.json"))]


def test_the_spec_declares_alarms_per_pipeline_and_a_bad_entry_names_its_field():
    spec = provisioning.load_spec()
    declared = {a.name: a for a in alarms.alarm_specs(spec)}
    assert {"airbatch-pricing_optimization-failed-run", "airbatch-pricing_optimization-dead-letters",
            "airbatch-pricing_optimization-quarantined-share", "airbatch-pricing_optimization-mape-deviation",
            "airbatch-packaging_training-auc-deviation", "airbatch-units_of_work-dead-letters"} <= set(declared)
    assert "airbatch-training_sweep-dead-letters" not in declared  # turned off with null
    request = declared["airbatch-pricing_optimization-mape-deviation"].request("airbatch", "arn:aws:sns:x:1:t")
    assert request["Dimensions"] == [{"Name": "Pipeline", "Value": "pricing_optimization"}]
    assert request["MetricName"] == "mape_p50_increase" and request["ComparisonOperator"] == "GreaterThanThreshold"
    assert request["AlarmActions"] == ["arn:aws:sns:x:1:t"] and request["TreatMissingData"] == "notBreaching"

    bad = spec_with("p", {"x": {"metric": "m", "comparison": "=>", "threshold": 1, "description": "d"}})
    with pytest.raises(alarms.AlarmSpecError, match=r"batch_resources.json: alarms.pipelines.p.x.comparison is '=>'"):
        alarms.alarm_specs(bad)
    bad = spec_with("p", {"x": {"metric": "m", "comparison": ">", "description": "d"}})
    with pytest.raises(alarms.AlarmSpecError, match=r"alarms.pipelines.p.x: give threshold"):
        alarms.alarm_specs(bad)


def test_provisioning_creates_the_topic_and_every_alarm_of_the_spec_idempotently(local_aws):
    cloudwatch = boto3.client("cloudwatch", **local_aws.client_kwargs)
    sns = boto3.client("sns", **local_aws.client_kwargs)
    iam = boto3.client("iam", **local_aws.client_kwargs)
    settings = Settings.from_env({"BATCH_LOCAL_VCPUS": "2"})
    spec = provisioning.load_spec()
    # The endpoint provisioned the spec when it started (the same apply): the alarms exist already.
    again = provisioning.apply(local_aws.batch, iam, spec, settings, cloudwatch, sns)
    names = [a.name for a in alarms.alarm_specs(spec)]
    assert {f"alarm/{n}" for n in names} <= set(again["unchanged"]) and "sns-topic/airbatch-alarms" in again["unchanged"]
    found = {a["AlarmName"]: a for a in cloudwatch.describe_alarms(AlarmNames=names[:100])["MetricAlarms"]}
    topic = next(t["TopicArn"] for t in sns.list_topics()["Topics"] if t["TopicArn"].endswith(":airbatch-alarms"))
    mape = found["airbatch-pricing_optimization-mape-deviation"]
    assert (mape["Namespace"], mape["MetricName"], mape["Threshold"]) == ("airbatch", "mape_p50_increase", 0.05)
    assert mape["Dimensions"] == [{"Name": "Pipeline", "Value": "pricing_optimization"}]
    assert mape["AlarmActions"] == [topic] and mape["OKActions"] == [topic]

    changed = copy.deepcopy(spec)
    changed["alarms"]["pipelines"]["pricing_optimization"]["mape-deviation"]["threshold"] = 0.1
    try:
        result = provisioning.apply(local_aws.batch, iam, changed, settings, cloudwatch, sns)
        assert result["updated"] == ["alarm/airbatch-pricing_optimization-mape-deviation"]
        [now] = cloudwatch.describe_alarms(AlarmNames=[mape["AlarmName"]])["MetricAlarms"]
        assert now["Threshold"] == 0.1
    finally:
        provisioning.apply(local_aws.batch, iam, spec, settings, cloudwatch, sns)


def test_published_figures_drive_an_alarm_to_alarm_and_back_delivering_each_change(local_aws, data_root):
    pipeline = f"alarm_test_{uuid.uuid4().hex[:8]}"
    spec = spec_with(pipeline, {"mape-deviation": {"metric": "mape_p50_increase", "comparison": ">",
                                                   "threshold": 0.05, "description": "MAPE rose"}})
    cloudwatch = boto3.client("cloudwatch", **local_aws.client_kwargs)
    sns = boto3.client("sns", **local_aws.client_kwargs)
    changes = {"created": [], "updated": [], "unchanged": []}
    topic = alarms.provision(cloudwatch, sns, spec, changes)
    assert f"alarm/airbatch-{pipeline}-dead-letters" in changes["created"]
    inbox = sns_inbox(local_aws, topic)
    run_root = str(data_root / "runs" / pipeline / "r1")

    summary = {"rows_in": 1000, "rows_quarantined": 10, "duration_s": 42.0,
               "fanout": {"succeeded": 18, "cached": 1, "failed": 1, "units_failed": 6, "cost": {"cost": 0.0123}},
               "metrics": {"mape_p50": 0.3, "note": "text is not a metric"}, "comparison": {"mape_p50_increase": 0.2}}
    record = alarms.publish_run(pipeline, "r1", alarms.run_figures(summary), run_root=run_root, spec=spec)

    listed = cloudwatch.list_metrics(Namespace="airbatch", Dimensions=[{"Name": "Pipeline", "Value": pipeline}])
    assert {m["MetricName"] for m in listed["Metrics"]} == {
        "RunFailed", "BatchesDone", "BatchesCached", "BatchesFailed", "UnitsDeadLettered", "QuarantinedShare",
        "DurationSeconds", "CostUSD", "mape_p50", "mape_p50_increase"}
    stats = cloudwatch.get_metric_statistics(
        Namespace="airbatch", MetricName="UnitsDeadLettered", Dimensions=[{"Name": "Pipeline", "Value": pipeline}],
        StartTime=time.time() - 600, EndTime=time.time() + 60, Period=60, Statistics=["Maximum"])
    assert [p["Maximum"] for p in stats["Datapoints"]] == [6.0]
    assert record["metrics"]["QuarantinedShare"] == pytest.approx(0.01)

    states = {a["name"]: a["state"] for a in record["alarms"]}
    assert states == {f"airbatch-{pipeline}-failed-run": "OK", f"airbatch-{pipeline}-dead-letters": "ALARM",
                      f"airbatch-{pipeline}-quarantined-share": "OK", f"airbatch-{pipeline}-mape-deviation": "ALARM"}
    [dead] = cloudwatch.describe_alarms(AlarmNames=[f"airbatch-{pipeline}-dead-letters"])["MetricAlarms"]
    assert dead["StateValue"] == "ALARM" and "Threshold Crossed: 1 datapoint [6" in dead["StateReason"]
    # The message CloudWatch publishes, as a subscriber of the topic gets it; and the notifiers' copy in the outbox.
    delivered = {json.loads(m["Message"])["AlarmName"]: m for m in inbox()}
    assert set(delivered) == {f"airbatch-{pipeline}-dead-letters", f"airbatch-{pipeline}-mape-deviation"}
    message = json.loads(delivered[f"airbatch-{pipeline}-dead-letters"]["Message"])
    assert (message["NewStateValue"], message["Trigger"]["MetricName"]) == ("ALARM", "UnitsDeadLettered")
    assert message["Trigger"]["Dimensions"] == [{"Name": "Pipeline", "Value": pipeline}]
    sent = [m for m in outbox(data_root) if m["kind"] == "alarm"]
    assert {m["data"]["alarm"]["AlarmName"] for m in sent} == set(delivered)
    assert any(m["subject"].startswith(f'ALARM: "airbatch-{pipeline}-dead-letters"') for m in sent)
    assert json.loads((data_root / "runs" / pipeline / "r1" / "alarms.json").read_text())["alarms"] == record["alarms"]

    # A clean run: both back to OK, each change delivered once; an unchanged state sends nothing.
    clean = {**summary, "fanout": {**summary["fanout"], "failed": 0, "units_failed": 0},
             "comparison": {"mape_p50_increase": 0.0}}
    record = alarms.publish_run(pipeline, "r2", alarms.run_figures(clean), spec=spec)
    assert {a["state"] for a in record["alarms"]} == {"OK"}
    back = [json.loads(m["Message"]) for m in inbox()]
    assert sorted((m["AlarmName"], m["OldStateValue"], m["NewStateValue"]) for m in back) == [
        (f"airbatch-{pipeline}-dead-letters", "ALARM", "OK"), (f"airbatch-{pipeline}-mape-deviation", "ALARM", "OK")]
    alarms.publish_run(pipeline, "r3", alarms.run_figures(clean), spec=spec)
    assert inbox() == []


def test_a_failed_task_publishes_run_failed_and_the_failed_run_alarm_fires(local_aws, data_root, monkeypatch):
    pipeline = f"alarm_test_{uuid.uuid4().hex[:8]}"
    spec = spec_with(pipeline)
    monkeypatch.setattr(batch_resources, "load_spec", lambda path=None: spec)
    cloudwatch = boto3.client("cloudwatch", **local_aws.client_kwargs)
    alarms.provision(cloudwatch, boto3.client("sns", **local_aws.client_kwargs), spec,
                     {"created": [], "updated": [], "unchanged": []})
    record = alarms.publish_failure(pipeline, "manual__1")
    assert record["metrics"] == {"RunFailed": 1.0}
    assert {a["name"]: a["state"] for a in record["alarms"]}[f"airbatch-{pipeline}-failed-run"] == "ALARM"
    assert any(m["kind"] == "alarm" and m["data"]["alarm"]["AlarmName"] == f"airbatch-{pipeline}-failed-run"
               for m in outbox(data_root))


def test_metrics_that_cannot_be_published_are_said_and_do_not_raise(monkeypatch, data_root):
    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", json.dumps({
        "conn_type": "aws", "login": "x", "password": "y",
        "extra": {"region_name": "us-east-1", "endpoint_url": "http://127.0.0.1:9"}}))
    # one attempt: the retries of a refused connection, with their back-off, would only make the test wait
    monkeypatch.setattr(alarms, "RETRIES", {**alarms.RETRIES, "max_attempts": 1})
    result = alarms.publish_summary("units_of_work", "r", {"rows_in": 1, "rows_quarantined": 0}, None)
    assert "metrics not published to CloudWatch" in result["error"] and "aws_default" in result["error"]
    assert alarms.publish_failure("units_of_work", "r") is None
