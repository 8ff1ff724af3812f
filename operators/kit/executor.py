"""Airflow's LocalExecutor, without the race that fails a deferred task when its trigger fires quickly.

When a task defers, its worker process exits cleanly and the executor reports SUCCESS for that try.
The supervisor takes a few seconds to report it; a trigger that fires in those seconds (a Batch job
that ends a few seconds after submission, as on the local endpoint) has already moved the task
instance back to scheduled, queued or running, with the same try number. Airflow 3.3.2's scheduler
then reads the late SUCCESS as "the task instance's state attribute is queued" and fails the task
(`SchedulerJobRunner._process_executor_events`; it ignores the late event only while the task is
scheduled). Upstream: apache/airflow#66374 (fixed for scheduled), #67287 (queued) and #72716
(running), with PRs #68741 and #72767.

`DeferSafeLocalExecutor` drops that one event: a SUCCESS for a try whose task instance is back in
scheduled, queued or running with `next_method` set. Airflow sets `next_method` when a task defers
and clears it only when the try ends (success, failure, retry), so such a SUCCESS cannot be the end
of the resumed try. Every other event goes to Airflow as it is.
"""
from __future__ import annotations

from airflow.executors.local_executor import LocalExecutor
from airflow.models.taskinstancekey import TaskInstanceKey
from airflow.utils.state import TaskInstanceState

#: A task instance in one of these states with next_method set is a resumed deferral.
RESUMED = (TaskInstanceState.SCHEDULED, TaskInstanceState.QUEUED, TaskInstanceState.RUNNING)


class DeferSafeLocalExecutor(LocalExecutor):
    """LocalExecutor whose late "success" from a deferral's exit cannot fail the resumed task."""

    def change_state(self, key, state, info=None, remove_running=True) -> None:
        if state == TaskInstanceState.SUCCESS and isinstance(key, TaskInstanceKey) and self.resumed_deferral(key):
            self.log.info("Dropped the executor's success for %s: it is the exit of the try's deferral, and the "
                          "try has resumed (apache/airflow#67287)", key)
            # The resumed try may already be running here under the same key: its own end removes it.
            return
        super().change_state(key, state, info, remove_running)

    @staticmethod
    def resumed_deferral(key: TaskInstanceKey) -> bool:
        from sqlalchemy import select

        from airflow.models.taskinstance import TaskInstance
        from airflow.utils.session import create_session

        with create_session() as session:
            row = session.execute(select(TaskInstance.state, TaskInstance.next_method).where(
                TaskInstance.dag_id == key.dag_id, TaskInstance.task_id == key.task_id,
                TaskInstance.run_id == key.run_id, TaskInstance.map_index == key.map_index,
                TaskInstance.try_number == key.try_number)).first()
        return row is not None and row.next_method is not None and row.state in RESUMED
