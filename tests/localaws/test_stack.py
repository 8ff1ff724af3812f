"""The in-process stack's helpers for tests and benchmarks (localaws/stack.py)."""
from __future__ import annotations

import sqlite3

from localaws.stack import copy_db


def test_a_copied_db_holds_the_sources_rows_including_those_still_in_its_wal(tmp_path):
    source = tmp_path / "source.db"
    with sqlite3.connect(source) as con:
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("CREATE TABLE t (x)")
        con.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(100)])
        con.commit()  # committed to the WAL; the connection, still open, has not checkpointed it
        (tmp_path / "target.db-wal").write_bytes(b"a stale WAL of an older copy")
        copy_db(source, tmp_path / "target.db")
    with sqlite3.connect(tmp_path / "target.db") as copy:
        assert copy.execute("SELECT count(*), sum(x) FROM t").fetchone() == (100, 4950)
