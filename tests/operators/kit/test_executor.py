"""DeferSafeLocalExecutor: the late success of a deferral's exit cannot fail the resumed try; other events pass."""
from __future__ import annotations

import pytest

from airflow.models.taskinstancekey import TaskInstanceKey
from airflow.utils.state import TaskInstanceState

from operators.kit.executor import DeferSafeLocalExecutor

KEY = TaskInstanceKey(dag_id="stock", task_id="deferred", run_id="r", try_number=1, map_index=-1)


@pytest.fixture
def executor(monkeypatch):
    executor = DeferSafeLocalExecutor(parallelism=1)
    monkeypatch.setattr(DeferSafeLocalExecutor, "resumed_deferral", staticmethod(lambda key: key == KEY))
    return executor


def test_a_success_for_a_resumed_deferral_is_dropped_and_the_resumed_try_stays_running(executor):
    executor.running.add(KEY)  # the resumed try, queued again under the same key
    executor.change_state(KEY, TaskInstanceState.SUCCESS)
    assert executor.get_event_buffer() == {} and KEY in executor.running


@pytest.mark.parametrize("state", [TaskInstanceState.FAILED, TaskInstanceState.RUNNING, TaskInstanceState.QUEUED])
def test_other_events_of_that_try_reach_the_scheduler(executor, state):
    executor.running.add(KEY)
    executor.change_state(KEY, state, remove_running=state == TaskInstanceState.FAILED)
    assert executor.get_event_buffer()[KEY][0] == state


def test_a_success_of_any_other_try_reaches_the_scheduler(executor):
    other = KEY.with_try_number(2)
    executor.running.add(other)
    executor.change_state(other, TaskInstanceState.SUCCESS)
    assert executor.get_event_buffer()[other][0] == TaskInstanceState.SUCCESS and other not in executor.running


def test_without_a_task_instance_in_the_db_nothing_is_dropped(airflow_db):
    assert DeferSafeLocalExecutor.resumed_deferral(KEY.with_try_number(99)) is False
