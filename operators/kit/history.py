"""The job history: what ran, how often, every status change with its time and reason, failure classes, metrics.

Two Parquet tables under `DATA_ROOT/history/`, partitioned Hive-style by sweep (one folder per
sweep run, written once when the sweep ends, so a re-run of the history writer replaces its own
folder and nothing else):

    history/configurations/sweep=<sweep id>/part-0.parquet   one row per configuration
    history/events/sweep=<sweep id>/part-0.parquet           one row per status change

Locally DuckDB reads them (`connect()` gives a connection with both as views); on AWS the same
files are Athena tables (`ATHENA_DDL`, then `MSCK REPAIR TABLE` to load new sweeps' partitions).
Status changes come from AWS Batch's own job descriptions (created, each attempt's start and stop
with its reason and exit code, the final status) and from the shard tasks (a capacity shortage
moving unstarted work to a fallback queue, throttled submissions).
"""
from __future__ import annotations

import datetime as dt
import json
from typing import Any, Iterable

from operators.kit.job_states import ENDED, RUNNING, SUBMITTED

HISTORY_DIR = "history"
TABLES = ("configurations", "events")
#: Columns of each table, in order (Athena's DDL below lists the same).
CONFIGURATION_COLUMNS = {
    "sweep_started_at": "timestamp", "dag_id": "string", "run_id": "string", "config_id": "string",
    "config_key": "string", "resource_class": "string", "queue": "string", "hyperparameters": "string",
    "status": "string", "reused": "boolean", "failure_class": "string", "error": "string", "attempts": "int", "batch_id": "int",
    "job_id": "string", "score": "double", "holdout_auc": "double", "units_fitted": "int",
    "train_seconds": "double",
}
EVENT_COLUMNS = {
    "at": "timestamp", "dag_id": "string", "run_id": "string", "job_id": "string", "array_index": "int",
    "attempt": "int", "queue": "string", "status": "string", "reason": "string", "exit_code": "int",
}
ATHENA_TYPES = {"timestamp": "timestamp", "string": "string", "int": "bigint", "double": "double",
                "boolean": "boolean"}


def history_root(root: str | None = None) -> str:
    from operators.kit.engine import data_root

    return f"{root or data_root()}/{HISTORY_DIR}"


def athena_ddl(location: str, database: str = "airbatch") -> str:
    """CREATE EXTERNAL TABLE statements for both tables at `location` (s3://bucket/prefix/history)."""
    statements = []
    for table, columns in (("configurations", CONFIGURATION_COLUMNS), ("events", EVENT_COLUMNS)):
        fields = ",\n  ".join(f"`{name}` {ATHENA_TYPES[kind]}" for name, kind in columns.items())
        statements.append(
            f"CREATE EXTERNAL TABLE IF NOT EXISTS {database}.sweep_{table} (\n  {fields}\n)\n"
            f"PARTITIONED BY (`sweep` string)\nSTORED AS PARQUET\nLOCATION '{location.rstrip('/')}/{table}/';\n"
            f"MSCK REPAIR TABLE {database}.sweep_{table};")
    return "\n\n".join(statements)


def _timestamp(ms: Any) -> dt.datetime | None:
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.timezone.utc) if ms else None


def job_events(descriptions: Iterable[dict[str, Any]], *, dag_id: str, run_id: str) -> list[dict[str, Any]]:
    """Status changes of Batch jobs from their DescribeJobs entries: created, each attempt's start and end, final."""
    events = []
    for job in descriptions:
        index = job.get("arrayProperties", {}).get("index")
        base = {"dag_id": dag_id, "run_id": run_id, "job_id": job["jobId"], "array_index": index,
                "queue": str(job.get("jobQueue", "")).rsplit("/", 1)[-1]}
        events.append({**base, "at": _timestamp(job.get("createdAt")), "attempt": None, "status": SUBMITTED,
                       "reason": None, "exit_code": None})
        for number, attempt in enumerate(job.get("attempts") or [], start=1):
            container = attempt.get("container", {})
            events.append({**base, "at": _timestamp(attempt.get("startedAt")), "attempt": number, "status": RUNNING,
                           "reason": None, "exit_code": None})
            events.append({**base, "at": _timestamp(attempt.get("stoppedAt")), "attempt": number,
                           "status": "ATTEMPT_ENDED", "reason": attempt.get("statusReason"),
                           "exit_code": container.get("exitCode")})
        if job.get("status") in ENDED:
            events.append({**base, "at": _timestamp(job.get("stoppedAt")), "attempt": len(job.get("attempts") or []),
                           "status": job["status"], "reason": job.get("statusReason"), "exit_code": None})
    return events


def _frame(rows: list[dict[str, Any]], columns: dict[str, str]):
    import pandas as pd

    frame = pd.DataFrame(rows, columns=list(columns))
    for name, kind in columns.items():
        if kind == "timestamp":
            frame[name] = pd.to_datetime(frame[name], utc=True)
        elif kind == "int":
            frame[name] = pd.to_numeric(frame[name]).astype("Int64")
        elif kind == "double":
            frame[name] = pd.to_numeric(frame[name]).astype("float64")
        elif kind == "boolean":
            frame[name] = frame[name].astype("boolean")
        else:
            frame[name] = frame[name].astype("string")
    return frame


def write(sweep_id: str, configurations: list[dict[str, Any]], events: list[dict[str, Any]],
          root: str | None = None, aws_conn_id: str | None = "aws_default") -> dict[str, str]:
    """Write one sweep's rows (replacing that sweep's earlier files, if any); the URIs written."""
    from batch_worker.runtime import parquet_bytes

    from operators.kit.engine import location, safe_name

    base = location(history_root(root), aws_conn_id)
    written = {}
    for table, rows, columns in (("configurations", configurations, CONFIGURATION_COLUMNS),
                                 ("events", events, EVENT_COLUMNS)):
        uri = base.join(table, f"sweep={safe_name(sweep_id)}", "part-0.parquet")
        base.write_bytes(uri, parquet_bytes(_frame(rows, columns)))
        written[table] = uri
    return written


def connect(root: str | None = None, aws_conn_id: str | None = "aws_default"):
    """A DuckDB connection with views `configurations` and `events` over every sweep's history (empty if none)."""
    import duckdb
    import pyarrow.dataset as ds

    from operators.kit.engine import location

    con = duckdb.connect()
    base = location(history_root(root), aws_conn_id)
    for table, columns in (("configurations", CONFIGURATION_COLUMNS), ("events", EVENT_COLUMNS)):
        folder = base.join(table).removeprefix("s3://")
        try:
            files = sorted(f for f in base.fs.find(folder) if f.endswith(".parquet") and "/.tmp-" not in f)
        except FileNotFoundError:
            files = []
        if files:
            dataset = ds.dataset(files, format="parquet", filesystem=base.fs if base.remote else None,
                                 partitioning="hive", partition_base_dir=folder)
            con.register(f"{table}_data", dataset)
        else:
            empty = _frame([], columns)
            empty["sweep"] = empty["config_id" if table == "configurations" else "job_id"]
            con.register(f"{table}_data", empty)
        con.execute(f"CREATE VIEW {table} AS SELECT * FROM {table}_data")
    return con


def leaderboard(con, run_id: str, top: int = 5) -> list[dict[str, Any]]:
    """The best trained configurations of one sweep (lowest score first)."""
    rows = con.execute(
        "SELECT config_id, score, holdout_auc, hyperparameters, status FROM configurations "
        "WHERE run_id = ? AND status IN ('trained', 'cached') AND score IS NOT NULL "
        "ORDER BY score, config_id LIMIT ?", [run_id, int(top)]).fetchall()
    return [{"config_id": r[0], "score": r[1], "holdout_auc": r[2], "hyperparameters": json.loads(r[3]),
             "status": r[4]} for r in rows]


def failures_by_class(con, dag_id: str, last: int = 5) -> list[dict[str, Any]]:
    """Failed configurations by class in each of the last `last` sweeps of `dag_id`, newest first."""
    rows = con.execute(
        "WITH recent AS (SELECT run_id, max(sweep_started_at) AS started FROM configurations WHERE dag_id = ? "
        "GROUP BY run_id ORDER BY started DESC LIMIT ?) "
        "SELECT r.run_id, r.started, c.failure_class, count(*) AS failed, min(c.error) AS an_error "
        "FROM recent r JOIN configurations c ON c.run_id = r.run_id AND c.dag_id = ? AND c.status = 'failed' "
        "GROUP BY r.run_id, r.started, c.failure_class ORDER BY r.started DESC, failed DESC, c.failure_class",
        [dag_id, int(last), dag_id]).fetchall()
    return [{"run_id": r[0], "started": str(r[1]), "failure_class": r[2], "failed": r[3], "example_error": r[4]}
            for r in rows]


def sweeps(con, dag_id: str, last: int = 10) -> list[dict[str, Any]]:
    """The last `last` sweeps of `dag_id`, newest first: when each started, its configurations by state and its
    best configuration (lowest score among the trained and cached); what the run view lists as the history."""
    rows = con.execute(
        "WITH recent AS (SELECT run_id, max(sweep_started_at) AS started FROM configurations WHERE dag_id = ? "
        "GROUP BY run_id ORDER BY started DESC LIMIT ?), "
        "best AS (SELECT run_id, config_id, score FROM configurations WHERE dag_id = ? "
        "AND status IN ('trained', 'cached') AND score IS NOT NULL "
        "QUALIFY row_number() OVER (PARTITION BY run_id ORDER BY score, config_id) = 1) "
        "SELECT r.run_id, r.started, count(*) AS configurations, "
        "count(*) FILTER (WHERE c.status = 'trained'), count(*) FILTER (WHERE c.status = 'cached'), "
        "count(*) FILTER (WHERE c.status = 'failed'), any_value(b.config_id), any_value(b.score) "
        "FROM recent r JOIN configurations c ON c.run_id = r.run_id AND c.dag_id = ? "
        "LEFT JOIN best b ON b.run_id = r.run_id "
        "GROUP BY r.run_id, r.started ORDER BY r.started DESC, r.run_id",
        [dag_id, int(last), dag_id, dag_id]).fetchall()
    return [{"run_id": r[0], "started": str(r[1]), "configurations": r[2], "trained": r[3], "cached": r[4],
             "failed": r[5], "best_config_id": r[6], "best_score": r[7]} for r in rows]
