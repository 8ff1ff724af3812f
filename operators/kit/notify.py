"""Notifications: a summary on success; the failing task, its error and the failed units on failure; why a run
was skipped; an alarm's state change on the local endpoint (operators.kit.alarms; on AWS CloudWatch delivers it to
the alarms' SNS topic itself).

Every message goes to the local outbox and, when configured, to SNS and e-mail (`operators.kit.delivery.send`).

No message carries credentials: only run ids, counts, metrics, URIs and the error's text. An error is carried
whole, every line of it (prep's message puts the reasons, the advice and the quarantine's path on the lines after
the first), up to ERROR_CHARS characters, with a note of what was cut.
"""
from __future__ import annotations

import json
from typing import Any

from airflow.sdk import BaseNotifier

from operators.kit.delivery import send

#: How many failed batch ids a failure message lists.
FAILED_BATCHES_SHOWN = 20
#: The most characters of an error a message carries (an e-mail or SNS message stays readable; the task log has all).
ERROR_CHARS = 4000


def whole_text(text: str, limit: int = ERROR_CHARS) -> str:
    """`text` without its surrounding blanks, every line of it, cut at `limit` characters with a note saying so."""
    text = text.strip()
    if len(text) <= limit:
        return text
    return text[:limit] + f"\n[... {len(text) - limit:,} more characters cut; the task log has the whole message]"


def error_text(exception: BaseException | None) -> str:
    """`Type: message` of an exception, the whole message (bounded by ERROR_CHARS)."""
    if exception is None:
        return "no exception recorded"
    message = str(exception).strip()
    return whole_text(f"{type(exception).__name__}: {message}" if message else type(exception).__name__)


def unit_counts(fanout: dict[str, Any]) -> str:
    """"300 units: 280 computed, 14 cached, 6 dead-lettered": what a run did with its units, never only their number.

    A run of a kit older than the per-unit counts has no `units_computed`/`units_cached`: its units that were not
    dead-lettered are then shown as "done" (computed or cached), which is all that is known."""
    units, failed = int(fanout.get("units") or 0), int(fanout.get("units_failed") or 0)
    if fanout.get("units_computed") is not None or fanout.get("units_cached") is not None:
        done = f"{int(fanout.get('units_computed') or 0):,} computed, {int(fanout.get('units_cached') or 0):,} cached"
    else:
        done = f"{units - failed:,} computed or cached"
    return f"{units:,} units: {done}, {failed:,} dead-lettered"


def success_message(summary: dict[str, Any]) -> tuple[str, str]:
    """Subject and body of a run's success: the generic fields, then the evaluator's own `lines`.

    Only `dag_id` and `run_id` are required; a field that is absent (no evaluation, no window,
    nothing published) leaves its line out instead of showing None.
    """
    decision = summary.get("decision") or {}
    fanout = summary.get("fanout") or {}
    units = f"({unit_counts(fanout)})"
    if summary.get("version"):
        subject = f"[{summary['dag_id']}] {decision.get('status') or 'evaluated'}: version {summary['version']} {units}"
    else:
        subject = f"[{summary['dag_id']}] succeeded {units}"
    lines = [f"run {summary['run_id']} succeeded in {summary.get('duration_s') or 0:.0f} s"]
    if summary.get("window"):
        lines.append(f"data window: {' to '.join(map(str, summary['window']))}")
    lines.append(unit_counts(fanout))
    lines.append(
        f"{fanout.get('batches', 0):,} batches: {fanout.get('succeeded', 0)} computed, {fanout.get('cached', 0)} "
        f"cached, {fanout.get('failed', 0)} failed ({fanout.get('units_failed', 0)} units dead-lettered"
        + (f": {fanout['dead_letter']}" if fanout.get("dead_letter") else "") + ")")
    if "rows_in" in summary:
        lines.append(f"rows: {summary['rows_in']} read, {summary.get('rows_quarantined', 0)} quarantined")
    if fanout.get("cost"):
        from operators.kit.cost import cost_line

        lines.append(cost_line(fanout["cost"]))
    if decision:
        reasons = "; ".join(decision.get("reasons") or [])
        lines.append(f"decision: {decision.get('status')} by {decision.get('by')} (proposed "
                     f"{decision.get('proposed')}" + (f": {reasons}" if reasons else "") + ")")
        if decision.get("not_current"):
            lines.append(f"not made current (current stays {decision['not_current'].get('current')}): "
                         f"{decision['not_current'].get('reason')}")
    lines.extend(str(line) for line in summary.get("lines") or [])
    alarms = summary.get("alarms") or {}
    if alarms.get("error"):
        lines.append(alarms["error"])
    elif alarms.get("alarms"):
        lines.append("alarms: " + ", ".join(f"{a['name']} {a['state']}" for a in alarms["alarms"]))
    for name in ("report", "published"):
        if summary.get(name):
            lines.append(f"{name}: {summary[name]}")
    return subject, "\n".join(lines)


def failure_message(context: dict[str, Any]) -> tuple[str, str, dict[str, Any]]:
    ti = context["ti"]
    error = error_text(context.get("exception"))
    failed_batches: list[int] = []
    units_failed = 0
    if ti.task_id.endswith("run_shard"):
        summary = ti.xcom_pull(task_ids=ti.task_id, key="summary", map_indexes=ti.map_index)
        if isinstance(summary, dict):
            failed_batches = summary.get("failed_batches", [])
            units_failed = summary.get("units_failed", 0)
    subject = f"[{ti.dag_id}] FAILED at {ti.task_id}" + (f"[{ti.map_index}]" if ti.map_index >= 0 else "")
    lines = [f"run {ti.run_id}: task {ti.task_id} (map index {ti.map_index}, try {ti.try_number}) failed",
             f"error: {error}"]
    if failed_batches:
        lines.append(f"failed batches ({len(failed_batches)} listed, {units_failed} units): "
                     f"{failed_batches[:FAILED_BATCHES_SHOWN]}")
    data = {"dag_id": ti.dag_id, "run_id": ti.run_id, "task_id": ti.task_id, "map_index": ti.map_index,
            "error": error, "failed_batches": failed_batches, "units_failed": units_failed}
    return subject, "\n".join(lines), data


def skip_message(dag_id: str, run_id: str, task_id: str, reason: str) -> tuple[str, str, dict[str, Any]]:
    """Subject, body and data of a run whose first stages found nothing to do and skip the rest of it."""
    reason = whole_text(reason)
    subject = f"[{dag_id}] SKIPPED at {task_id}: nothing to do"
    lines = [f"run {run_id}: task {task_id} skipped the rest of the run", f"why: {reason}"]
    return subject, "\n".join(lines), {"dag_id": dag_id, "run_id": run_id, "task_id": task_id, "reason": reason}


def notify_skip(dag_id: str, run_id: str, task_id: str, reason: str) -> dict:
    """Say that a run skips itself, and why. Sent by the stage that decides it, before it raises
    AirflowSkipException: Airflow's `on_skipped_callback` gets no exception, so it could not say why."""
    subject, body, data = skip_message(dag_id, run_id, task_id, reason)
    return send("skipped", subject, body, data)


class FailureNotifier(BaseNotifier):
    """`on_failure_callback` for a pipeline's tasks: sends the failing task, its whole error and failed units."""

    template_fields = ()

    def notify(self, context) -> None:
        subject, body, data = failure_message(context)
        send("failure", subject, body, data, context)
        # RunFailed = 1 for the pipeline's failed-run alarm (operators.kit.alarms); after the message, which it never
        # holds up or hides.
        from operators.kit.alarms import publish_failure

        publish_failure(data["dag_id"], data["run_id"])


def notify_success(summary: dict[str, Any], context: dict[str, Any] | None = None) -> dict:
    subject, body = success_message(summary)
    return send("success", subject, body, json.loads(json.dumps(summary, default=str)), context)
