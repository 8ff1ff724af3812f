"""Print what the latest run of a DAG did: its state, its tasks, and the `summary` task's result.

    python -m operators.kit.summary DAG_ID [--log FILE]

Exits 1 when the run did not succeed, naming the failed tasks and the first error from the log.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path


#: The task whose result is a DAG's run summary, by convention.
SUMMARY_TASKS = ("summary", "notify")


def latest_run_report(dag_id: str) -> tuple[str, list[str], dict | None]:
    from airflow.models.dagrun import DagRun
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        run = session.scalars(select(DagRun).where(DagRun.dag_id == dag_id).order_by(DagRun.id.desc()).limit(1)).first()
        if run is None:
            return "missing", [], None
        tis = session.scalars(select(TaskInstance).where(TaskInstance.dag_id == dag_id, TaskInstance.run_id == run.run_id)).all()
        by_task: dict[str, Counter] = {}
        for ti in tis:
            by_task.setdefault(ti.task_id, Counter())[str(ti.state)] += 1
        lines = [f"  {task}: " + ", ".join(f"{n} {state}" for state, n in sorted(states.items()))
                 for task, states in by_task.items()]
        summary = None
        for task_id in SUMMARY_TASKS:
            summary = xcom_value(dag_id, run.run_id, task_id)
            if summary is not None:
                break
        return str(run.state), lines, summary


def xcom_value(dag_id: str, run_id: str, task_id: str, key: str = "return_value"):
    """One XCom value of a finished run, decoded (None when absent)."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        value = session.scalars(select(XComModel.value).where(
            XComModel.dag_id == dag_id, XComModel.run_id == run_id, XComModel.task_id == task_id,
            XComModel.key == key)).first()
    return json.loads(value) if isinstance(value, str) else value


def first_error(log: Path) -> str | None:
    if not log.exists():
        return None
    for line in log.read_text(errors="replace").splitlines():
        if "Exception:" in line or "Error:" in line:
            return line.strip()[:500]
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m operators.kit.summary")
    parser.add_argument("dag_id")
    parser.add_argument("--log", type=Path)
    args = parser.parse_args(argv)
    state, lines, summary = latest_run_report(args.dag_id)
    print(f"{args.dag_id}: latest run {state}")
    print("\n".join(lines))
    if summary is not None:
        print("summary:")
        print(json.dumps(summary, indent=2, default=str))
    if state != "success":
        error = first_error(args.log) if args.log else None
        if error:
            print(f"first error: {error}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
