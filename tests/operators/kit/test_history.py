"""The job history: rows written per sweep as Parquet, read back with DuckDB; leaderboard, failures by class, DDL."""
from __future__ import annotations

import datetime as dt

import duckdb

from operators.kit import history


def row(run_id: str, config_id: str, status: str, score=None, failure_class=None, error=None, day: int = 1):
    return {"sweep_started_at": dt.datetime(2026, 3, day, tzinfo=dt.timezone.utc), "dag_id": "training_sweep",
            "run_id": run_id, "config_id": config_id, "config_key": f"key-{config_id}", "resource_class": "CPU",
            "queue": "airbatch-cpu", "hyperparameters": '{"l2": 1.0}', "status": status, "reused": False,
            "failure_class": failure_class, "error": error, "attempts": 1, "batch_id": 0, "job_id": "j",
            "score": score, "holdout_auc": None, "units_fitted": 3, "train_seconds": 0.1}


def test_sweeps_are_written_apart_and_queried_together(data_root):
    history.write("training_sweep.a", [row("a", "x", "trained", 0.5), row("a", "y", "trained", 0.3),
                                       row("a", "z", "failed", None, "no_fit", "no unit fitted")], [])
    history.write("training_sweep.b", [row("b", "x", "cached", 0.5, day=2),
                                       row("b", "w", "failed", None, "lost", "Host EC2 terminated", day=2),
                                       row("b", "v", "failed", None, "lost", "Host EC2 terminated", day=2)], [])
    con = history.connect()
    assert [(r["config_id"], r["score"]) for r in history.leaderboard(con, "a")] == [("y", 0.3), ("x", 0.5)]
    assert [r["config_id"] for r in history.leaderboard(con, "b")] == ["x"]
    trend = history.failures_by_class(con, "training_sweep", last=5)
    assert [(t["run_id"], t["failure_class"], t["failed"]) for t in trend] == [("b", "lost", 2), ("a", "no_fit", 1)]
    assert [(t["run_id"]) for t in history.failures_by_class(con, "training_sweep", last=1)] == ["b"]
    # a re-write of one sweep replaces only its own rows
    history.write("training_sweep.a", [row("a", "x", "trained", 0.4)], [])
    assert history.connect().execute("SELECT count(*) FROM configurations").fetchone()[0] == 4
    # the files are plain Hive-partitioned Parquet: DuckDB (or Athena) reads them without this module
    glob = data_root / "history" / "configurations" / "*" / "*.parquet"
    assert duckdb.sql(f"SELECT count(DISTINCT sweep) FROM read_parquet('{glob}', hive_partitioning=true)").fetchall()[0][0] == 2


def test_an_empty_history_reads_as_empty_tables(data_root):
    con = history.connect()
    assert con.execute("SELECT count(*) FROM configurations").fetchone() == (0,)
    assert history.leaderboard(con, "none") == [] and history.failures_by_class(con, "training_sweep") == []


def test_job_events_give_every_status_change_with_time_and_reason():
    job = {"jobId": "p:1", "jobQueue": "arn:aws:batch:eu-west-1:1:job-queue/airbatch-cpu", "createdAt": 1_000,
           "arrayProperties": {"index": 1}, "status": "SUCCEEDED", "stoppedAt": 9_000, "attempts": [
               {"startedAt": 2_000, "stoppedAt": 3_000, "statusReason": "Host EC2 (instance i-1) terminated.",
                "container": {"exitCode": 137}},
               {"startedAt": 4_000, "stoppedAt": 9_000, "statusReason": "Essential container in task exited",
                "container": {"exitCode": 0}}]}
    events = history.job_events([job], dag_id="d", run_id="r")
    assert [(e["status"], e["attempt"], e["exit_code"]) for e in events] == [
        ("SUBMITTED", None, None), ("RUNNING", 1, None), ("ATTEMPT_ENDED", 1, 137), ("RUNNING", 2, None),
        ("ATTEMPT_ENDED", 2, 0), ("SUCCEEDED", 2, None)]
    assert events[2]["reason"].startswith("Host EC2") and events[0]["queue"] == "airbatch-cpu"
    assert events[1]["at"] == dt.datetime(1970, 1, 1, 0, 0, 2, tzinfo=dt.timezone.utc)


def test_athena_ddl_names_every_column_and_the_partition():
    ddl = history.athena_ddl("s3://bucket/data/history")
    assert "CREATE EXTERNAL TABLE IF NOT EXISTS airbatch.sweep_configurations" in ddl
    assert "LOCATION 's3://bucket/data/history/events/'" in ddl and "PARTITIONED BY (`sweep` string)" in ddl
    for name in [*history.CONFIGURATION_COLUMNS, *history.EVENT_COLUMNS]:
        assert f"`{name}`" in ddl


def test_the_sweeps_of_a_dag_newest_first_with_their_states_and_best_configuration(data_root):
    history.write("training_sweep.a", [row("a", "x", "trained", 0.5), row("a", "y", "trained", 0.3),
                                       row("a", "z", "failed", None, "no_fit", "no unit fitted")], [])
    history.write("training_sweep.b", [row("b", "x", "cached", 0.5, day=2),
                                       row("b", "w", "failed", None, "lost", "Host EC2 terminated", day=2)], [])
    history.write("training_sweep.c", [row("c", "v", "failed", None, "lost", "Host EC2 terminated", day=3)], [])
    con = history.connect()
    sweeps = history.sweeps(con, "training_sweep", last=10)
    assert [(s["run_id"], s["configurations"], s["trained"], s["cached"], s["failed"], s["best_config_id"],
             s["best_score"]) for s in sweeps] == [("c", 1, 0, 0, 1, None, None), ("b", 2, 0, 1, 1, "x", 0.5),
                                                   ("a", 3, 2, 0, 1, "y", 0.3)]
    assert sweeps[0]["started"].startswith("2026-03-03")
    assert [s["run_id"] for s in history.sweeps(con, "training_sweep", last=2)] == ["c", "b"]
    assert history.sweeps(con, "another_dag") == []
