"""The approval step: Airflow's HITL `ApprovalOperator`, keeping who answered what in XCom either way.

On "Reject" the stock operator skips its direct downstream tasks and its return value does not
reach XCom, so a later task cannot tell a person's rejection from a skip. This subclass pushes the
answer (option, user, time) under the XCom key `review` before the stock behaviour runs.
"""
from __future__ import annotations

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
