"""The in-process stack's helpers for tests and benchmarks (localaws/stack.py)."""
from __future__ import annotations

import sqlite3

import jsonschema
import pytest
from airflow.sdk import Param
from airflow.sdk.definitions.param import ParamValidationError
from jsonschema import validators

from localaws.stack import check_param_schemas_once, copy_db


def test_a_schema_is_checked_once_and_values_are_still_validated_every_time(monkeypatch):
    check_param_schemas_once()
    checks = []
    original = validators.Draft202012Validator.check_schema.__func__
    monkeypatch.setattr(validators.Draft202012Validator, "check_schema",
                        classmethod(lambda cls, schema, **kw: (checks.append(schema), original(cls, schema, **kw))[1]))
    param = Param(5, type="integer", minimum=1, maximum=10, title="a schema no other test uses")
    for value in (1, 7, 10):
        assert param.resolve(value) == value
    with pytest.raises(ParamValidationError, match="11 is greater than the maximum of 10"):
        param.resolve(11)
    with pytest.raises(ParamValidationError, match="'7' is not of type 'integer'"):
        param.resolve("7")
    assert len(checks) == 1, checks


def test_a_schema_that_fails_its_check_fails_every_time():
    check_param_schemas_once()
    broken = Param(1, type="no-such-type")
    for _ in range(2):
        with pytest.raises(jsonschema.SchemaError, match="no-such-type"):
            broken.resolve(1)


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
