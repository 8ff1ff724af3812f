"""scripts/airflow_db.sh: make up and make demo migrate the metadata DB only when it is not at the recorded revision."""
from __future__ import annotations

import hashlib
import os
import sqlite3
import subprocess

from localaws.stack import REPO


def airflow_db(home, url: str, commands: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", f"source scripts/airflow_db.sh\n{commands}"], cwd=REPO, capture_output=True,
                          text=True, timeout=120,
                          env={**os.environ, "AIRFLOW_HOME": str(home), "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": url})


def needed(home, url: str) -> bool:
    result = airflow_db(home, url, "migration_needed")
    assert result.returncode in (0, 1), result.stderr
    return result.returncode == 0


def test_a_db_is_migrated_until_its_revision_is_recorded_and_again_when_it_changes(tmp_path):
    db = tmp_path / "airflow.db"
    url = f"sqlite:///{db}"
    assert needed(tmp_path, url)  # no DB yet
    with sqlite3.connect(db) as con:
        con.execute("CREATE TABLE alembic_version (version_num VARCHAR(32))")
        con.execute("INSERT INTO alembic_version VALUES ('abc123')")
    assert needed(tmp_path, url)  # a DB, but no migrate recorded for it
    assert airflow_db(tmp_path, url, "record_migration").returncode == 0
    stamp = (tmp_path / "migrated.stamp").read_text()
    release, revision, digest = stamp.split()
    # The DB by a digest of its URL, never the URL itself (a PostgreSQL URL can carry a password).
    assert release[0].isdigit() and revision == "abc123" and digest == hashlib.sha256(url.encode()).hexdigest()[:16]
    assert str(db) not in stamp
    assert not needed(tmp_path, url)
    with sqlite3.connect(db) as con:
        con.execute("UPDATE alembic_version SET version_num = 'def456'")
    assert needed(tmp_path, url)  # another revision: migrate again
    other = tmp_path / "other.db"
    other.write_bytes(db.read_bytes())
    assert airflow_db(tmp_path, url, "record_migration").returncode == 0
    assert needed(tmp_path, f"sqlite:///{other}")  # the same revision in another DB: migrate that one


def test_a_db_that_does_not_answer_is_migrated(tmp_path):
    url = "postgresql+psycopg2://airflow:not-a-password@/airflow?host=/nonexistent"
    assert airflow_db(tmp_path, url, "db_revision").stdout == ""
    assert needed(tmp_path, url)
