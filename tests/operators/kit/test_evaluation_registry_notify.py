"""Evaluation rules, the registry's statuses, and notifications on the outbox, SNS and SMTP."""
from __future__ import annotations

import email
import json
import threading
import warnings
from pathlib import Path

import pandas as pd
import pytest

from operators.pipelines.pricing import evaluation
from operators.kit import notify, registry


def prices(n_ok=8, n_bad=2, mape=0.2) -> pd.DataFrame:
    ok = pd.DataFrame({"segment": ["a", "b"] * (n_ok // 2), "status": "ok", "reason": None, "holdout_mape": mape,
                       "elasticity": -2.0, "price_change_pct": 0.05, "expected_profit_current": 10.0,
                       "expected_profit_recommended": 11.0, "uplift": 1.0})
    bad = pd.DataFrame({"segment": "a", "status": "degenerate", "reason": ["too_few_points"] * n_bad,
                        "holdout_mape": float("nan"), "elasticity": float("nan"), "price_change_pct": 0.0,
                        "expected_profit_current": float("nan"), "expected_profit_recommended": float("nan"),
                        "uplift": float("nan")})
    return pd.concat([ok, bad], ignore_index=True)


def test_metrics_cover_all_units():
    m = evaluation.metrics(prices(), units_in_input=12, units_dead_lettered=2)
    assert m["units_priced"] == 8 and m["units_scored"] == 10
    assert m["coverage"] == pytest.approx(8 / 12) and m["degenerate_share"] == pytest.approx(0.2)
    assert m["dead_letter_share"] == pytest.approx(2 / 12)
    assert m["uplift_pct"] == pytest.approx(0.1) and m["mape_p50"] == pytest.approx(0.2)
    assert m["degenerate_by_reason"] == {"too_few_points": 2}


def test_proposals_approve_review_reject():
    limits = evaluation.check_thresholds({})
    good = {"mape_p50": 0.2, "coverage": 0.95, "degenerate_share": 0.05, "dead_letter_share": 0.0}
    assert evaluation.propose(good, limits)[0] == "approve"
    decision, reasons = evaluation.propose({**good, "mape_p50": 0.45}, limits)
    assert decision == "review" and reasons == ["mape_p50 0.45 > approve limit 0.35"]
    decision, reasons = evaluation.propose({**good, "coverage": 0.3}, limits)
    assert decision == "reject" and "coverage 0.3 < reject limit 0.5" in reasons
    # deltas against the last approved version count too
    previous = {"version": "v1", "metrics": {**good, "mape_p50": 0.1, "uplift_pct": 0.1, "units_priced": 8},
                "input_stats": {"rows": 100, "units": 10, "mean_log_price": 2.0, "mean_log_quantity": 1.0}}
    deltas = evaluation.compare(good, {"rows": 150, "units": 10, "mean_log_price": 2.0, "mean_log_quantity": 1.0},
                                previous)
    assert deltas["mape_p50_increase"] == pytest.approx(0.1) and deltas["input_shift"] == pytest.approx(0.5)
    assert evaluation.propose({**good, **deltas}, limits)[0] == "review"


@pytest.mark.parametrize("thresholds, message", [
    ({"maybe": {}}, "unknown set 'maybe'"),
    ({"approve": {"max_mape": 0.1}}, "unknown limit 'max_mape'"),
    ({"reject": {"min_coverage": "high"}}, "must be a number"),
])
def test_bad_thresholds_are_named(thresholds, message):
    with pytest.raises(ValueError) as err:
        evaluation.check_thresholds(thresholds)
    assert message in str(err.value)


def test_registry_statuses_current_and_finality(tmp_path):
    models = registry.Registry(str(tmp_path), "pricing", aws_conn_id=None)
    args = dict(metrics={"m": 1}, input_stats={}, lineage={"run_id": "r"}, proposed="review", reasons=[])
    first = models.register("2026-02-16_a", **args)
    assert first["status"] == registry.PENDING and models.current() is None
    models.decide("2026-02-16_a", registry.APPROVED, by="person:pat")
    assert models.current()["version"] == "2026-02-16_a"
    models.register("2026-02-23_b", **args)
    models.decide("2026-02-23_b", registry.REJECTED, by="thresholds")
    assert models.current()["version"] == "2026-02-16_a"  # a rejected version never becomes current
    with pytest.raises(registry.RegistryError, match="already Rejected"):
        models.decide("2026-02-23_b", registry.APPROVED, by="person:pat")
    again = models.register("2026-02-16_a", **args)  # the same run evaluated again: a new version
    assert again["version"] == "2026-02-16_a-r2" and again["status"] == registry.PENDING
    assert [v["version"] for v in models.versions()] == ["2026-02-16_a", "2026-02-23_b", "2026-02-16_a-r2"]


def success_summary() -> dict:
    return {"dag_id": "pricing_optimization", "run_id": "r1", "window": ["2026-01-19", "2026-02-16"],
            "duration_s": 61.0, "rows_in": 1000, "rows_quarantined": 3,
            "fanout": {"units": 500, "batches": 30, "succeeded": 28, "cached": 1, "failed": 1, "units_failed": 4,
                       "dead_letter": "/x/dead_letter.parquet"},
            "version": "v7", "metrics": {"coverage": 0.9, "mape_p50": 0.21, "degenerate_share": 0.05},
            "decision": {"status": "Approved", "by": "person:pat", "proposed": "review", "reasons": ["r"]},
            "report": "/x/report.html", "published": "/x/current/prices.parquet"}


def test_success_message_names_units_cache_failures_metrics_decision_and_duration(data_root):
    sent = notify.notify_success(success_summary())
    assert sent["channels"] == ["outbox"]
    message = json.loads(Path(sent["outbox"]).read_text())
    assert message["subject"] == "[pricing_optimization] Approved: version v7 (500 units)"
    body = message["body"]
    for text in ("succeeded in 61 s", "28 computed, 1 cached, 1 failed (4 units dead-lettered: /x/dead_letter.parquet)",
                 "3 quarantined", "Approved by person:pat", "mape_p50=0.21", "report: /x/report.html"):
        assert text in body


class _TI:
    dag_id, run_id, task_id, map_index, try_number = "pricing_optimization", "r1", "run_shard", 2, 2

    def xcom_pull(self, task_ids, key, map_indexes):
        assert (task_ids, key, map_indexes) == ("run_shard", "summary", 2)
        return {"failed_batches": [4, 9], "units_failed": 31}


def test_failure_message_names_the_task_its_first_error_and_failed_units(data_root):
    context = {"ti": _TI(), "exception": RuntimeError("shard 2: 2 of 40 batches failed\nmore detail")}
    notify.FailureNotifier().notify(context)
    [path] = (data_root / "outbox").glob("*-failure.json")
    message = json.loads(path.read_text())
    assert message["subject"] == "[pricing_optimization] FAILED at run_shard[2]"
    assert "first error: RuntimeError: shard 2: 2 of 40 batches failed" in message["body"]
    assert "failed batches (2 listed, 31 units): [4, 9]" in message["body"]
    assert "more detail" not in message["body"]


def test_sns_delivers_the_same_message(local_aws, data_root, monkeypatch):
    import boto3

    sns, sqs = boto3.client("sns", **local_aws.client_kwargs), boto3.client("sqs", **local_aws.client_kwargs)
    topic = sns.create_topic(Name="airbatch-notify")["TopicArn"]
    queue = sqs.create_queue(QueueName="airbatch-notify-inbox")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn)
    monkeypatch.setenv("NOTIFY_SNS_TOPIC_ARN", topic)
    sent = notify.notify_success(success_summary())
    assert sent["channels"] == ["outbox", "sns"]
    [received] = sqs.receive_message(QueueUrl=queue, WaitTimeSeconds=2)["Messages"]
    envelope = json.loads(received["Body"])
    assert envelope["Subject"] == "[pricing_optimization] Approved: version v7 (500 units)"
    assert "Approved by person:pat" in envelope["Message"]


def test_smtp_delivers_the_same_message(data_root, monkeypatch):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import asyncore
        import smtpd

    received = []

    class Inbox(smtpd.SMTPServer):
        def process_message(self, peer, mailfrom, rcpttos, data, **kwargs):
            received.append((rcpttos, data.decode() if isinstance(data, bytes) else data))

    server = Inbox(("127.0.0.1", 0), None)
    port = server.socket.getsockname()[1]
    loop = threading.Thread(target=asyncore.loop, kwargs={"timeout": 0.1, "count": 100}, daemon=True)
    loop.start()
    try:
        monkeypatch.setenv("AIRFLOW_CONN_SMTP_DEFAULT", json.dumps({
            "conn_type": "smtp", "host": "127.0.0.1", "port": port,
            "extra": {"disable_tls": True, "disable_ssl": True, "from_email": "airbatch@localhost"}}))
        monkeypatch.setenv("NOTIFY_EMAIL_TO", "pricing-team@example.com")
        sent = notify.notify_success(success_summary())
        loop.join(timeout=15)
    finally:
        server.close()
    assert sent["channels"] == ["outbox", "smtp"]
    [(recipients, data)] = received
    assert recipients == ["pricing-team@example.com"]
    mail = email.message_from_string(data)
    assert mail["Subject"] == "[pricing_optimization] Approved: version v7 (500 units)"
    text = "".join(part.get_payload(decode=True).decode() for part in mail.walk() if not part.is_multipart())
    assert "Approved by person:pat" in text
