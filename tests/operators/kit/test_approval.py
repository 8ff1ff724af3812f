"""The approval step (operators.kit.approval): the page a reviewer reads, rendered from the evaluation, links to the
run view and its report; a model name that could break the page's template is refused."""
from __future__ import annotations

import jinja2
import pytest

from operators.kit.approval import review_request


def test_the_approval_page_links_to_the_run_view_and_its_report():
    ask = review_request(task_id="ask_reviewer", model="probe")
    evaluation = {"version": "v7", "proposal": "review", "reasons": ["mape 0.143 > approve limit 0.12"],
                  "lines": ["MAPE 0.143"], "report_location": "DATA_ROOT/registry/probe/versions/v7/report.html",
                  "run_view": "/airbatch/runs/pricing/r1"}

    class TaskInstance:
        @staticmethod
        def xcom_pull(task_ids):
            return evaluation

    body = jinja2.Environment(undefined=jinja2.StrictUndefined).from_string(ask.body).render(ti=TaskInstance())
    assert "[Run view: batches, dead letters, version, cost](/airbatch/runs/pricing/r1)" in body
    assert "([open](/airbatch/runs/pricing/r1/report))" in body
    assert "Report: DATA_ROOT/registry/probe/versions/v7/report.html" in body


def test_a_model_name_that_would_enter_the_template_as_code_is_refused():
    with pytest.raises(ValueError, match=r"model 'probe }}' must be letters, digits"):
        review_request(task_id="ask_reviewer", model="probe }}")
