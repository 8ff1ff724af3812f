"""The approval step: Airflow's HITL `ApprovalOperator`, keeping who answered what in XCom either way.

On "Reject" the stock operator skips its direct downstream tasks and its return value does not
reach XCom, so a later task cannot tell a person's rejection from a skip. This subclass pushes the
answer (option, user, time) under the XCom key `review` before the stock behaviour runs.

`review_request` builds the approval task of a unit pipeline. Its page shows the proposal, the
reasons, the evaluator's summary lines (numbers already rounded by the evaluator), where the report
lies under DATA_ROOT, and links to the run view (plugins/airbatch_runs.py) and to the report there.
The templates read only the evaluate task's XCom, never a param.
"""
from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

from airflow.providers.standard.operators.hitl import ApprovalOperator

REVIEW_KEY = "review"


class ReviewApprovalOperator(ApprovalOperator):
    def execute_complete(self, context, event: dict[str, Any]) -> Any:
        if "error" not in event:
            user = event.get("responded_by_user") or {}
            at = event.get("responded_at")
            context["ti"].xcom_push(key=REVIEW_KEY, value={
                "chosen_options": list(event["chosen_options"]),
                "user": user.get("name") or user.get("id") or "unknown",
                "at": at.isoformat() if hasattr(at, "isoformat") else str(at),
            })
        return super().execute_complete(context=context, event=event)


#: The approval page, rendered from the evaluation (evaluate's XCom): proposal, reasons, summary lines, report.
REVIEW_BODY = """{% set evaluation = ti.xcom_pull(task_ids=EVALUATE) %}Proposed: **{{ evaluation['proposal'] }}**, because
{% for reason in evaluation['reasons'] %}- {{ reason }}
{% endfor %}
{% for line in evaluation['lines'] %}- {{ line }}
{% endfor %}
Report: {{ evaluation['report_location'] }}{% if evaluation.get('run_view') %} \
([open]({{ evaluation['run_view'] }}/report)) · [Run view: batches, dead letters, version, cost]({{ evaluation['run_view'] }})\
{% endif %}"""


def review_request(*, task_id: str, model: str, evaluate_task_id: str = "evaluate",
                   response_timeout: timedelta = timedelta(days=3)) -> ReviewApprovalOperator:
    """The approval task asking a person about the version `evaluate_task_id` registered for `model`."""
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", model):
        raise ValueError(f"model {model!r} must be letters, digits, '_', '.' or '-': it becomes part of a template")
    evaluate = repr(evaluate_task_id)
    return ReviewApprovalOperator(
        task_id=task_id,
        subject=f"Approve {model} version {{{{ ti.xcom_pull(task_ids={evaluate})['version'] }}}}?",
        body=REVIEW_BODY.replace("EVALUATE", evaluate),
        response_timeout=response_timeout,
    )
