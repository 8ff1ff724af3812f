"""A real units_of_work run with a dead-lettered batch publishes its figures to CloudWatch, drives the pipeline's
dead-letters alarm to ALARM, delivers the change to the alarms' SNS topic and the notifiers, and the run view shows
each alarm's state; a failed run drives the failed-run alarm (dag.test() against the local endpoint)."""
from __future__ import annotations

import json
import time
import uuid

import boto3
import pytest

from airflow.utils.state import DagRunState
from tests.operators.kit.test_alarms import outbox, sns_inbox
from tests.plugins.apps import plugin_clients
from tests.plugins.test_run_view import view
from tests.system.test_batch_smoke import load_dag

pytestmark = pytest.mark.system
PIPELINE = "units_of_work"


@pytest.fixture
def api(airflow_db):
    """The api-server's app with the plugin mounted and a client per user."""
    with plugin_clients() as client:
        yield client


def reset(cloudwatch, *names: str) -> None:
    """Alarms to OK, as after a clean run: the session's endpoint is shared with other tests' runs."""
    for name in names:
        cloudwatch.set_alarm_state(AlarmName=name, StateValue="OK", StateReason="test start")


def test_a_run_with_dead_letters_alarms_notifies_and_shows_in_the_run_view(airflow_db, local_aws, data_root,
                                                                          api, monkeypatch):
    monkeypatch.setenv("SHARD_RETRY_DELAY_S", "1")
    cloudwatch = boto3.client("cloudwatch", **local_aws.client_kwargs)
    sns = boto3.client("sns", **local_aws.client_kwargs)
    dead_letters, failed_run = f"airbatch-{PIPELINE}-dead-letters", f"airbatch-{PIPELINE}-failed-run"
    reset(cloudwatch, dead_letters, failed_run)
    topic = next(t["TopicArn"] for t in sns.list_topics()["Topics"] if t["TopicArn"].endswith(":airbatch-alarms"))
    inbox = sns_inbox(local_aws, topic)
    salt = uuid.uuid4().hex[:8]
    conf = {"units": 40, "bucket_count": 4, "batches_per_shard": 4, "fail_units": ["u000007"],
            "min_success_ratio": 0.5, "salt": salt}
    started = time.time()
    run = load_dag(PIPELINE).test(run_conf=conf)
    assert run.state == DagRunState.SUCCESS

    stats = cloudwatch.get_metric_statistics(
        Namespace="airbatch", MetricName="UnitsDeadLettered", Dimensions=[{"Name": "Pipeline", "Value": PIPELINE}],
        StartTime=started - 60, EndTime=time.time() + 60, Period=60, Statistics=["Maximum"])
    assert max(p["Maximum"] for p in stats["Datapoints"]) >= 1
    listed = {m["MetricName"] for m in cloudwatch.list_metrics(
        Namespace="airbatch", Dimensions=[{"Name": "Pipeline", "Value": PIPELINE}])["Metrics"]}
    assert {"RunFailed", "BatchesDone", "BatchesFailed", "BatchesCached", "UnitsDeadLettered", "QuarantinedShare",
            "DurationSeconds", "CostUSD"} <= listed

    [alarm] = cloudwatch.describe_alarms(AlarmNames=[dead_letters])["MetricAlarms"]
    assert alarm["StateValue"] == "ALARM" and run.run_id in alarm["StateReason"]
    messages = [json.loads(m["Message"]) for m in inbox()]
    assert [(m["AlarmName"], m["NewStateValue"]) for m in messages] == [(dead_letters, "ALARM")]
    assert any(m["kind"] == "alarm" and m["subject"].startswith(f'ALARM: "{dead_letters}"') for m in outbox(data_root))

    page = api("reader").get(view(run))
    data = api("reader").get(view(run) + "/data.json").json()
    states = {a["name"]: a["state"] for a in data["alarms"]["alarms"]}
    assert states[dead_letters] == "ALARM" and states[failed_run] == "OK"
    assert data["alarms"]["namespace"] == "airbatch" and data["alarms"]["dimensions"] == {"Pipeline": PIPELINE}
    assert 'id="alarms"' in page.text and dead_letters in page.text and "ALARM" in page.text

    # The same units, every batch required: the shard fails, its failure callback publishes RunFailed = 1.
    strict = load_dag(PIPELINE).test(run_conf={**conf, "min_success_ratio": 1.0, "salt": salt + "-strict"})
    assert strict.state == DagRunState.FAILED
    [alarm] = cloudwatch.describe_alarms(AlarmNames=[failed_run])["MetricAlarms"]
    assert alarm["StateValue"] == "ALARM"
    assert (failed_run, "ALARM") in [(json.loads(m["Message"])["AlarmName"], json.loads(m["Message"])["NewStateValue"])
                                     for m in inbox()]
    failed_view = api("reader").get(view(strict) + "/data.json").json()
    assert {a["name"]: a["state"] for a in failed_view["alarms"]["alarms"]}[failed_run] == "ALARM"
