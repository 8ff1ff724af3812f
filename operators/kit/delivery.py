"""Delivery of a notification: the local outbox always, SNS and e-mail when configured.

Every message goes to the local outbox (`DATA_ROOT/outbox/*.json`, one file per message, and the
task log), which needs no server. When configured, it also goes to

- SNS: `NOTIFY_SNS_TOPIC_ARN` (through the provider's `SnsNotifier` and the `aws_default` connection);
- SMTP: `NOTIFY_EMAIL_TO` (comma-separated; through `SmtpNotifier` and the `smtp_default` connection,
  or `NOTIFY_SMTP_CONN_ID`).

What a message says is `operators.kit.notify`'s (runs) and `operators.kit.alarms`' (alarm state changes).
"""
from __future__ import annotations

import html
import logging
import os
import time
from typing import Any

log = logging.getLogger(__name__)


def channels() -> list[str]:
    found = ["outbox"]
    if os.environ.get("NOTIFY_SNS_TOPIC_ARN"):
        found.append("sns")
    if os.environ.get("NOTIFY_EMAIL_TO"):
        found.append("smtp")
    return found


def send(kind: str, subject: str, body: str, data: dict[str, Any], context: dict[str, Any] | None = None) -> dict:
    """Deliver one message on every configured channel; return {"outbox": uri, "channels": [...]}."""
    from operators.kit.engine import data_root, location, safe_name  # pandas and DuckDB stay out of DAG parsing

    dag_id = data.get("dag_id", "dag")
    outbox = location(f"{data_root()}/outbox")
    name = safe_name(f"{time.strftime('%Y%m%dT%H%M%S')}-{time.time_ns() % 10**9:09d}-{dag_id}-{kind}")
    uri = outbox.join(f"{name}.json")
    outbox.write_json(uri, {"kind": kind, "subject": subject, "body": body, "data": data})
    log.info("notification (%s): %s\n%s", kind, subject, body)
    sent = ["outbox"]
    context = context or {}
    if os.environ.get("NOTIFY_SNS_TOPIC_ARN"):
        from airflow.providers.amazon.aws.notifications.sns import SnsNotifier

        SnsNotifier(target_arn=os.environ["NOTIFY_SNS_TOPIC_ARN"], subject=subject[:99],
                    message=body).notify(context)
        sent.append("sns")
    if os.environ.get("NOTIFY_EMAIL_TO"):
        from airflow.providers.smtp.notifications.smtp import SmtpNotifier

        SmtpNotifier(to=[a.strip() for a in os.environ["NOTIFY_EMAIL_TO"].split(",") if a.strip()],
                     from_email=os.environ.get("NOTIFY_EMAIL_FROM", "airbatch@localhost"), subject=subject,
                     html_content=f"<pre>{html.escape(body)}</pre>",
                     smtp_conn_id=os.environ.get("NOTIFY_SMTP_CONN_ID") or None).notify(context)
        sent.append("smtp")
    return {"outbox": uri, "channels": sent}
