"""Notifications (operators.kit.notify): success, failure and skip messages on the outbox, SNS and SMTP."""
from __future__ import annotations

import email
import json
import threading
import time
import warnings
from pathlib import Path

import pytest

from operators.kit import notify


def other_pipeline_summary(**changes) -> dict:
    """A success summary of a pipeline whose evaluator knows nothing of pricing."""
    summary = {"dag_id": "category_classifier", "run_id": "r9", "window": ["2026-02-09", "2026-02-16"],
               "duration_s": 12.4, "rows_in": 50, "rows_quarantined": 0,
               "fanout": {"units": 40, "batches": 4, "succeeded": 4, "cached": 0, "failed": 0, "units_failed": 0},
               "version": "v2", "metrics": {"accuracy": 0.91234567},
               "lines": ["accuracy 0.912 (last approved 0.9)"],
               "decision": {"status": "Approved", "by": "thresholds", "proposed": "approve",
                            "reasons": ["every approve limit met"]},
               "report": "/x/report.html", "published": None}
    summary.update(changes)
    return summary


def test_a_notification_says_when_an_approved_version_was_not_made_current(data_root):
    reason = "its data interval ends 2026-01-26, before the current version w26's (2026-02-02)"
    decision = {"status": "Approved", "by": "thresholds", "proposed": "approve", "reasons": [],
                "not_current": {"current": "w26", "reason": reason}}
    _, body = notify.success_message(other_pipeline_summary(decision=decision))
    assert f"not made current (current stays w26): {reason}" in body
    _, body = notify.success_message(other_pipeline_summary())
    assert "not made current" not in body


def test_success_message_shows_the_evaluators_lines_and_never_none(data_root):
    subject, body = notify.success_message(other_pipeline_summary())
    assert subject == "[category_classifier] Approved: version v2 (40 units: 40 computed or cached, 0 dead-lettered)"
    assert "accuracy 0.912 (last approved 0.9)" in body and "0.91234567" not in body
    assert "decision: Approved by thresholds (proposed approve: every approve limit met)" in body
    assert "None" not in body and "published" not in body
    _, body = notify.success_message(other_pipeline_summary(lines=None, metrics={}, window=None))
    assert "None" not in body and "data window" not in body


def test_success_message_of_a_pipeline_without_evaluation(data_root):
    summary = {"dag_id": "units_of_work", "run_id": "r1", "duration_s": 3.0,
               "fanout": {"units": 10, "batches": 2, "succeeded": 1, "cached": 1, "failed": 0, "units_failed": 0}}
    sent = notify.notify_success(summary)
    message = json.loads(Path(sent["outbox"]).read_text())
    assert message["subject"] == "[units_of_work] succeeded (10 units: 10 computed or cached, 0 dead-lettered)"
    assert "1 computed, 1 cached, 0 failed" in message["body"]
    assert "None" not in message["body"] and "decision" not in message["body"]


def success_summary() -> dict:
    return {"dag_id": "pricing_optimization", "run_id": "r1", "window": ["2026-01-19", "2026-02-16"],
            "duration_s": 61.0, "rows_in": 1000, "rows_quarantined": 3,
            "fanout": {"units": 500, "batches": 30, "succeeded": 28, "cached": 1, "failed": 1, "units_failed": 4,
                       "units_computed": 480, "units_cached": 16, "dead_letter": "/x/dead_letter.parquet"},
            "version": "v7", "metrics": {"coverage": 0.9}, "lines": ["coverage 0.9"],
            "decision": {"status": "Approved", "by": "person:pat", "proposed": "review", "reasons": ["r"]},
            "report": "/x/report.html", "published": "/x/current/outputs.parquet"}


def test_success_message_names_units_cache_failures_lines_decision_and_duration(data_root):
    sent = notify.notify_success(success_summary())
    assert sent["channels"] == ["outbox"]
    message = json.loads(Path(sent["outbox"]).read_text())
    assert message["subject"] == "[pricing_optimization] Approved: version v7 (500 units: 480 computed, 16 cached, 4 dead-lettered)"
    body = message["body"]
    for text in ("succeeded in 61 s", "data window: 2026-01-19 to 2026-02-16",
                 "\n500 units: 480 computed, 16 cached, 4 dead-lettered\n",
                 "30 batches: 28 computed, 1 cached, 1 failed (4 units dead-lettered: /x/dead_letter.parquet)",
                 "3 quarantined", "Approved by person:pat", "\ncoverage 0.9\n", "report: /x/report.html",
                 "published: /x/current/outputs.parquet"):
        assert text in body


class _TI:
    dag_id, run_id, task_id, map_index, try_number = "pricing_optimization", "r1", "run_shard", 2, 2

    def xcom_pull(self, task_ids, key, map_indexes):
        assert (task_ids, key, map_indexes) == ("run_shard", "summary", 2)
        return {"failed_batches": [4, 9], "units_failed": 31}


def test_failure_message_names_the_task_its_whole_error_and_failed_units(data_root):
    context = {"ti": _TI(), "exception": RuntimeError("shard 2: 2 of 40 batches failed\nmore detail")}
    notify.FailureNotifier().notify(context)
    [path] = (data_root / "outbox").glob("*-failure.json")
    message = json.loads(path.read_text())
    assert message["subject"] == "[pricing_optimization] FAILED at run_shard[2]"
    assert "error: RuntimeError: shard 2: 2 of 40 batches failed\nmore detail\n" in message["body"]
    assert "failed batches (2 listed, 31 units): [4, 9]" in message["body"]
    assert message["data"]["error"] == "RuntimeError: shard 2: 2 of 40 batches failed\nmore detail"


def test_a_failure_notification_carries_prep_s_whole_message_and_cuts_a_huge_one_saying_so(data_root, tmp_path):
    """prep's refusal puts its reasons, advice and the quarantine's path after its first line: all of it is sent."""
    from batch_worker.workloads import get_workload

    from operators.kit import prep

    sample = tmp_path / "units.csv"
    sample.write_text("unit_id,seq,value\n" + "".join(f"u{i},{i if i % 3 else 'x'},1.5\n" for i in range(30)))
    with pytest.raises(prep.PrepError) as refused:
        prep.prepare(str(sample), get_workload("noop").schema, str(tmp_path / "prep"), 4)
    assert len(str(refused.value).splitlines()) >= 3
    notify.FailureNotifier().notify({"ti": _TI(), "exception": refused.value})
    [message] = [json.loads(p.read_text()) for p in (data_root / "outbox").glob("*-failure.json")]
    whole = f"PrepError: {str(refused.value).strip()}"
    assert message["data"]["error"] == whole and f"error: {whole}\n" in message["body"]
    assert "max_quarantined_share=0.1:\n  non_numeric:seq: 10" in message["body"]
    assert "quarantine.parquet" in message["body"]  # the last line: where the bad rows are

    huge = RuntimeError("x" * 10_000)
    text = notify.error_text(huge)
    assert text.startswith("RuntimeError: xxx") and len(text) < notify.ERROR_CHARS + 200
    assert text.endswith("[... 6,014 more characters cut; the task log has the whole message]")


def test_a_run_that_skips_itself_says_why(data_root):
    sent = notify.notify_skip("packaging_inference_daily", "r7", "prepare",
                              "no rows in the window [2026-03-04, 2026-03-05) of x.parquet: nothing to do")
    message = json.loads(Path(sent["outbox"]).read_text())
    assert message["kind"] == "skipped"
    assert message["subject"] == "[packaging_inference_daily] SKIPPED at prepare: nothing to do"
    assert "why: no rows in the window [2026-03-04, 2026-03-05) of x.parquet: nothing to do" in message["body"]


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
    assert envelope["Subject"] == "[pricing_optimization] Approved: version v7 (500 units: 480 computed, 16 cached, 4 dead-lettered)"
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
        deadline = time.monotonic() + 15
        while not received and loop.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        server.close()
    assert sent["channels"] == ["outbox", "smtp"]
    [(recipients, data)] = received
    assert recipients == ["pricing-team@example.com"]
    mail = email.message_from_string(data)
    assert mail["Subject"] == "[pricing_optimization] Approved: version v7 (500 units: 480 computed, 16 cached, 4 dead-lettered)"
    text = "".join(part.get_payload(decode=True).decode() for part in mail.walk() if not part.is_multipart())
    assert "Approved by person:pat" in text
