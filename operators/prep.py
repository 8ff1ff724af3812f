"""Prep: validate one input table against a workload's schema, quarantine bad rows, bucket the rest.

`prepare` reads CSV or Parquet (a file, a directory, a glob; local or s3://) with one DuckDB
connection and writes, under `out_uri`:

- `batches/bucket=<id>/data_0.parquet`: the good rows, one file per non-empty bucket. A row's bucket
  is a stable md5 of its unit key modulo `bucket_count`, so every row of a unit lands in the same
  batch, on every run and on every engine (`bucketing_sql`). Only the schema's columns are written,
  typed (columns that arrived as text, e.g. from CSV, are parsed).
- `quarantine.parquet`: the bad rows, every input column as read plus `reason` (only when there are
  bad rows). Reasons: `null:<col>` (NULL, or NaN in a float column, where the schema forbids it),
  `non_numeric:<col>` / `non_date:<col>` (text that does not parse), `out_of_range:<col>` (outside
  Column.min/max) and `duplicate` (a repeated `unique_key` among otherwise good rows; of each group
  the row that sorts first on all its values is kept).
- `manifest.parquet`: one row per batch (batch_id, uri, rows, units, content_hash), written last.

Rows outside the optional `window` on `schema.time_column` are not part of the run; rows whose
time value is missing or unparseable stay in it, to be quarantined. Every step is set-based SQL;
only a 64-bit hash per row leaves DuckDB, to look for duplicate keys (see `_duplicate_key_hashes`).

`athena_ctas_sql` builds the same predicates and the same bucket expression for Athena (a CTAS that
writes the good rows bucketed by that expression); `run_athena_prep` submits it.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import math
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from contextlib import closing
from dataclasses import dataclass

import duckdb
import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
from batch_worker.schema import DTYPES, InputSchema
from batch_worker.storage import Location

BATCHES_DIR = "batches"
MANIFEST_FILE = "manifest.parquet"
QUARANTINE_FILE = "quarantine.parquet"
BUCKET_COLUMN = "bucket"
REASON_COLUMN = "reason"
MAX_BUCKETS = 10_000
#: Hex digits of the unit key's md5 that pick its bucket: 56 bits stay non-negative in Athena's
#: signed BIGINT, so both engines compute the same modulo.
KEY_HEX_DIGITS = 14
MANIFEST_COLUMNS = ("batch_id", "uri", "rows", "units", "content_hash")

_INPUT_SUFFIXES = {".parquet": "parquet", ".csv": "csv", ".csv.gz": "csv"}
_KEY_SEPARATOR = "chr(31)"  # ASCII unit separator between key values
_NULL_KEY_MARKER = "chr(30)"  # stands for a NULL key value, which would otherwise vanish from the text
_TABLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$")


@dataclass
class PrepResult:
    """What `prepare` wrote and counted; `to_dict()` is small enough for an XCom."""

    out_uri: str
    manifest_uri: str
    quarantine_uri: str | None
    rows_in: int
    rows_ok: int
    rows_quarantined: int
    quarantined_by_reason: dict[str, int]
    units: int
    batches: int
    bucket_count: int

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class SchemaError(ValueError):
    """The input's columns do not match the schema; the message names every problem."""

    def __init__(self, missing: Sequence[str], mistyped: Sequence[tuple[str, str, str]]):
        self.missing = tuple(missing)
        self.mistyped = tuple(mistyped)  # (column, expected dtype, found type)
        problems = []
        if self.missing:
            problems.append("missing column(s): " + ", ".join(repr(name) for name in self.missing))
        if self.mistyped:
            problems.append("mistyped column(s): " + ", ".join(
                f"{name!r} (expected {expected}, found {found})" for name, expected, found in self.mistyped))
        super().__init__("input does not match the schema: " + "; ".join(problems))


# --- SQL shared by the DuckDB and the Athena paths -------------------------------------------------

@dataclass(frozen=True)
class Dialect:
    """How one SQL engine spells the few things prep's generated SQL needs."""

    name: str
    types: Mapping[str, str]  # schema dtype -> the engine's type a text value is parsed to
    try_cast: str  # format string with {expr} and {type}
    is_nan: str  # format string with {expr}
    md5_hex: str  # lowercase hex md5 of a string; format string with {expr}
    hex_prefix_to_int: str  # the first KEY_HEX_DIGITS hex digits as an integer; format string with {expr}
    text: str  # a value as text; format string with {expr}


DUCKDB = Dialect(
    name="duckdb",
    types={"string": "VARCHAR", "int": "BIGINT", "float": "DOUBLE", "date": "DATE"},
    try_cast="TRY_CAST({expr} AS {type})",
    is_nan="isnan({expr})",
    md5_hex="md5({expr})",
    hex_prefix_to_int=f"CAST('0x' || left({{expr}}, {KEY_HEX_DIGITS}) AS UBIGINT)",
    text="CAST({expr} AS VARCHAR)",
)
ATHENA = Dialect(
    name="athena",
    types={"string": "varchar", "int": "bigint", "float": "double", "date": "date"},
    try_cast="try_cast({expr} AS {type})",
    is_nan="is_nan({expr})",
    md5_hex="lower(to_hex(md5(to_utf8({expr}))))",
    hex_prefix_to_int=f"from_base(substr({{expr}}, 1, {KEY_HEX_DIGITS}), 16)",
    text="CAST({expr} AS varchar)",
)
DIALECTS = {d.name: d for d in (DUCKDB, ATHENA)}


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _number(value: float) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"column bounds must be finite numbers, got {value!r}")
    return repr(value)


def _time_literal(value: str | dt.date) -> tuple[str, dt.datetime]:
    """(SQL literal, comparable datetime) of one window bound: an ISO date or date-time."""
    if isinstance(value, dt.datetime):
        moment = value
    elif isinstance(value, dt.date):
        return f"DATE '{value.isoformat()}'", dt.datetime.combine(value, dt.time())
    else:
        try:
            day = dt.date.fromisoformat(value)
        except ValueError:
            moment = dt.datetime.fromisoformat(value)
        else:
            return f"DATE '{day.isoformat()}'", dt.datetime.combine(day, dt.time())
    if moment.tzinfo is not None:
        moment = moment.astimezone(dt.timezone.utc).replace(tzinfo=None)
    return f"TIMESTAMP '{moment.isoformat(sep=' ')}'", moment


def _window_literals(schema: InputSchema, window: tuple[str, str]) -> tuple[str, str]:
    """SQL literals of a window's [start, end) bounds, after checking the window makes sense."""
    if schema.time_column is None:
        raise ValueError("a window needs schema.time_column")
    (start, start_at), (end, end_at) = (_time_literal(bound) for bound in window)
    if start_at >= end_at:
        raise ValueError(f"window start {window[0]!r} is not before its end {window[1]!r}")
    return start, end


class SchemaSql:
    """The SQL one schema needs in one dialect: typed values, bad-row checks, the window, the bucket.

    `text_columns` are the non-string columns whose source values are text and must be parsed
    (TRY_CAST); a failed parse is a bad row, not an error. Every check is a two-valued predicate
    (never NULL), true for a bad row, so `NOT (check)` can filter safely.
    """

    def __init__(self, schema: InputSchema, dialect: Dialect | str = DUCKDB, text_columns: Iterable[str] = ()):
        self.schema = schema
        self.dialect = DIALECTS[dialect] if isinstance(dialect, str) else dialect
        self.text_columns = frozenset(text_columns)

    def value(self, name: str) -> str:
        """The typed value of a column."""
        column = self.schema.column(name)
        if name in self.text_columns:
            return self.dialect.try_cast.format(expr=_ident(name), type=self.dialect.types[column.dtype])
        return _ident(name)

    def checks(self) -> list[tuple[str, str]]:
        """(reason, predicate true for a bad row), most fundamental first: nulls, parse errors, ranges."""
        nulls, parse_errors, ranges = [], [], []
        for column in self.schema.columns:
            raw, value = _ident(column.name), self.value(column.name)
            nan = f"coalesce({self.dialect.is_nan.format(expr=value)}, false)" if column.dtype == "float" else None
            if not column.nullable:
                nulls.append((f"null:{column.name}", f"({raw} IS NULL OR {nan})" if nan else f"{raw} IS NULL"))
            if column.name in self.text_columns:
                kind = "non_date" if column.dtype == "date" else "non_numeric"
                parse_errors.append((f"{kind}:{column.name}", f"({raw} IS NOT NULL AND {value} IS NULL)"))
            if column.dtype in ("int", "float") and (column.min is not None or column.max is not None):
                outside = [f"{value} < {_number(column.min)}"] if column.min is not None else []
                outside += [f"{value} > {_number(column.max)}"] if column.max is not None else []
                test = " OR ".join(outside)
                test = f"NOT {nan} AND ({test})" if nan else test
                ranges.append((f"out_of_range:{column.name}", f"coalesce({test}, false)"))
        return nulls + parse_errors + ranges

    def valid(self) -> str:
        """Predicate true for a good row."""
        checks = self.checks()
        return "NOT (" + " OR ".join(test for _, test in checks) + ")" if checks else "TRUE"

    def reason(self) -> str:
        """The first failing check's reason, NULL for a good row."""
        checks = self.checks()
        if not checks:
            return "CAST(NULL AS VARCHAR)"
        return "CASE " + " ".join(f"WHEN {test} THEN {_literal(reason)}" for reason, test in checks) + " END"

    def in_scope(self, window: tuple[str, str] | None) -> str:
        """Predicate true for a row of this run: time value in [start, end), or missing/unparseable."""
        if window is None:
            return "TRUE"
        start, end = _window_literals(self.schema, window)
        time_column = self.schema.time_column
        value = self.value(time_column)
        keep = [f"coalesce({value} >= {start} AND {value} < {end}, false)"]
        keep += [test for reason, test in self.checks()
                 if reason in (f"null:{time_column}", f"non_date:{time_column}")]
        return "(" + " OR ".join(keep) + ")"

    def key_text(self, names: Sequence[str]) -> str:
        """The columns' typed values as one text, separated, with NULL spelled out."""
        parts = []
        for name in names:
            column = self.schema.column(name)
            text = self.value(name)
            if column.dtype != "string":
                text = self.dialect.text.format(expr=text)
            parts.append(f"coalesce({text}, {_NULL_KEY_MARKER})" if column.nullable else text)
        return f" || {_KEY_SEPARATOR} || ".join(parts)

    def bucket(self, bucket_count: int) -> str:
        """A row's bucket id: md5 of its unit key text, first 56 bits, modulo bucket_count."""
        _check_bucket_count(bucket_count)
        digest = self.dialect.md5_hex.format(expr=self.key_text(self.schema.unit_key))
        return f"{self.dialect.hex_prefix_to_int.format(expr=digest)} % {bucket_count}"


def bucketing_sql(schema: InputSchema, bucket_count: int, dialect: Dialect | str = DUCKDB,
                  text_columns: Iterable[str] = ()) -> str:
    """The SQL expression of a row's bucket id in `dialect` (the same ids in DuckDB and Athena).

    Stable across processes, runs and engine versions: the first 56 bits of the md5 of the unit key
    values (as text, joined with chr(31)) modulo `bucket_count`. String, integer and date keys give
    the same text in both engines; float keys do not (the engines format doubles differently).
    """
    return SchemaSql(schema, dialect, text_columns).bucket(bucket_count)


def _check_bucket_count(bucket_count: int) -> None:
    if isinstance(bucket_count, bool) or not isinstance(bucket_count, int) or not 1 <= bucket_count <= MAX_BUCKETS:
        raise ValueError(f"bucket_count must be an integer in 1..{MAX_BUCKETS}, got {bucket_count!r}")


def _check_schema_shape(schema: InputSchema) -> None:
    if not schema.unit_key:
        raise ValueError("schema.unit_key is empty: prep needs a unit key to bucket rows")
    names = set(schema.names)
    for role, keys in (("unit_key", schema.unit_key), ("unique_key", schema.unique_key),
                       ("time_column", (schema.time_column,) if schema.time_column else ())):
        unknown = [key for key in keys if key not in names]
        if unknown:
            raise ValueError(f"schema.{role} names column(s) {unknown} that are not in schema.columns")
    if BUCKET_COLUMN in names:
        raise ValueError(f"schema column {BUCKET_COLUMN!r} clashes with the partition column prep writes")


# --- Athena ------------------------------------------------------------------------------------------

def athena_ctas_sql(source_table: str, schema: InputSchema, target_table: str, external_location: str,
                    bucket_count: int, window: tuple[str, str] | None = None) -> str:
    """A CTAS that writes the good rows of `source_table` as Parquet, bucketed like `prepare` does.

    Same checks, window and bucket expression as the DuckDB path (`SchemaSql` in the Athena
    dialect). Every non-string column is try_cast to its type, so string-typed source tables (CSV
    tables) are parsed as `prepare` parses CSV. The table is bucketed by the computed `bucket`
    column: with Hive bucketing an integer v < bucket_count lands in bucket file v, so Athena's
    buckets are `prepare`'s batch ids. Duplicates on unique_key keep the row that sorts first.
    Bad rows are left out (no quarantine table).
    """
    _check_schema_shape(schema)
    _check_bucket_count(bucket_count)
    for role, table in (("source_table", source_table), ("target_table", target_table)):
        if not _TABLE_NAME.match(table):
            raise ValueError(f"{role} {table!r} is not a [database.]table name")
    if not external_location.startswith("s3://"):
        raise ValueError(f"external_location must be an s3:// URI, got {external_location!r}")
    sql = SchemaSql(schema, ATHENA, (c.name for c in schema.columns if c.dtype != "string"))
    columns = ", ".join(_ident(name) for name in schema.names)
    typed = ", ".join(f"{sql.value(name)} AS {_ident(name)}" for name in schema.names)
    where = [sql.valid()] + ([sql.in_scope(window)] if window else [])
    query = (f"SELECT {typed}, {sql.bucket(bucket_count)} AS {BUCKET_COLUMN}\n"
             f"FROM {source_table}\nWHERE " + "\n  AND ".join(where))
    if schema.unique_key:
        unique = ", ".join(_ident(name) for name in schema.unique_key)
        query = (f"SELECT {columns}, {BUCKET_COLUMN} FROM (\n"
                 f"SELECT *, row_number() OVER (PARTITION BY {unique} ORDER BY {columns}) AS _dup_rank\n"
                 f"FROM (\n{query}\n)) WHERE _dup_rank = 1")
    return (f"CREATE TABLE {target_table}\n"
            f"WITH (format = 'PARQUET', external_location = {_literal(external_location)}, "
            f"bucketed_by = ARRAY['{BUCKET_COLUMN}'], bucket_count = {bucket_count})\nAS\n{query}")


def run_athena_prep(source_table: str, schema: InputSchema, target_table: str, external_location: str,
                    bucket_count: int, *, database: str, output_location: str,
                    window: tuple[str, str] | None = None, workgroup: str = "primary",
                    aws_conn_id: str = "aws_default", wait: bool = True, poll_seconds: int = 10) -> str:
    """Submit `athena_ctas_sql(...)` through Airflow's AthenaHook; return the query execution id.

    With `wait`, poll until the query ends and raise RuntimeError unless it succeeded.
    """
    from airflow.providers.amazon.aws.hooks.athena import AthenaHook

    query = athena_ctas_sql(source_table, schema, target_table, external_location, bucket_count, window)
    hook = AthenaHook(aws_conn_id=aws_conn_id)
    execution_id = hook.run_query(query, query_context={"Database": database},
                                  result_configuration={"OutputLocation": output_location}, workgroup=workgroup)
    if wait:
        state = hook.poll_query_status(execution_id, sleep_time=poll_seconds)
        if state != "SUCCEEDED":
            reason = hook.get_state_change_reason(execution_id)
            raise RuntimeError(f"Athena prep query {execution_id} ended {state}: {reason}")
    return execution_id


def athena_manifest_sql(target_table: str, schema: InputSchema) -> str:
    """One manifest row per file of the CTAS output: its batch (bucket), rows, units and an order-free hash.

    Athena's `checksum` aggregate is independent of row order, like the DuckDB path's content hash.
    A bucket written as several files gives several batches with the same bucket id.
    """
    if not _TABLE_NAME.match(target_table):
        raise ValueError(f"target_table {target_table!r} is not a [database.]table name")
    sql = SchemaSql(schema, ATHENA)
    row_text = sql.key_text(schema.names)
    return (f'SELECT "$path" AS uri, {BUCKET_COLUMN} AS bucket, count(*) AS rows, '
            f"count(DISTINCT {sql.key_text(schema.unit_key)}) AS units, "
            f"to_hex(checksum({row_text})) AS content_hash\n"
            f'FROM {target_table}\nGROUP BY "$path", {BUCKET_COLUMN}\nORDER BY {BUCKET_COLUMN}, uri')


def athena_quarantine_sql(source_table: str, schema: InputSchema, window: tuple[str, str] | None = None) -> str:
    """Counts of the rows the CTAS leaves out, by reason (the DuckDB path's quarantine reasons)."""
    sql = SchemaSql(schema, ATHENA, (c.name for c in schema.columns if c.dtype != "string"))
    where = f"\nWHERE {sql.in_scope(window)}" if window else ""
    return (f"SELECT reason, count(*) AS n FROM (SELECT {sql.reason()} AS reason FROM {source_table}{where})\n"
            f"WHERE reason IS NOT NULL GROUP BY reason ORDER BY reason")


def _athena_rows(hook, execution_id: str) -> list[dict[str, str | None]]:
    rows: list[list[str | None]] = []
    for page in hook.get_query_results_paginator(execution_id):
        rows += [[cell.get("VarCharValue") for cell in row["Data"]] for row in page["ResultSet"]["Rows"]]
    if not rows:
        return []
    header, *data = rows
    return [dict(zip(header, values)) for values in data]


def prepare_athena(source_table: str, schema: InputSchema, out_uri: str, bucket_count: int, *, database: str,
                   output_location: str, window: tuple[str, str] | None = None, workgroup: str = "primary",
                   aws_conn_id: str = "aws_default", poll_seconds: int = 10,
                   storage_options: dict | None = None) -> PrepResult:
    """`prepare` at scale: the same checks and buckets as an Athena CTAS into `out_uri`/batches/.

    Three queries through the provider's AthenaHook (what its AthenaOperator runs): the CTAS
    (`athena_ctas_sql`), the counts of left-out rows by reason (`athena_quarantine_sql`; the rows
    themselves stay in the source table, and duplicates the CTAS drops are not counted), and the
    manifest (`athena_manifest_sql`), written as `out_uri`/manifest.parquet.
    """
    from airflow.providers.amazon.aws.hooks.athena import AthenaHook

    out = Location.parse(out_uri, storage_options)
    if not out.remote:
        raise ValueError(f"the Athena prep writes to S3; out_uri must be s3://, got {out_uri!r}")
    target = f"{database}.prep_{re.sub(r'[^a-z0-9]', '_', out.uri.lower())[-60:].strip('_')}"
    run_athena_prep(source_table, schema, target, out.join(BATCHES_DIR) + "/", bucket_count, database=database,
                    output_location=output_location, window=window, workgroup=workgroup, aws_conn_id=aws_conn_id,
                    poll_seconds=poll_seconds)
    hook = AthenaHook(aws_conn_id=aws_conn_id)

    def query(text: str) -> list[dict[str, str | None]]:
        execution_id = hook.run_query(text, query_context={"Database": database},
                                      result_configuration={"OutputLocation": output_location}, workgroup=workgroup)
        state = hook.poll_query_status(execution_id, sleep_time=poll_seconds)
        if state != "SUCCEEDED":
            raise RuntimeError(f"Athena query {execution_id} ended {state}: {hook.get_state_change_reason(execution_id)}")
        return _athena_rows(hook, execution_id)

    by_reason = {row["reason"]: int(row["n"]) for row in query(athena_quarantine_sql(source_table, schema, window))}
    files = query(athena_manifest_sql(target, schema))
    manifest = pd.DataFrame({
        "batch_id": range(len(files)),
        "uri": [row["uri"] for row in files],
        "rows": [int(row["rows"]) for row in files],
        "units": [int(row["units"]) for row in files],
        "content_hash": [f"athena-{row['bucket']}-{row['content_hash']}" for row in files],
    }, columns=list(MANIFEST_COLUMNS))
    from batch_worker.runtime import parquet_bytes

    out.write_bytes(out.join(MANIFEST_FILE), parquet_bytes(manifest))
    rows_ok = int(manifest["rows"].sum())
    rows_quarantined = sum(by_reason.values())
    return PrepResult(out_uri=out.uri, manifest_uri=out.join(MANIFEST_FILE), quarantine_uri=None,
                      rows_in=rows_ok + rows_quarantined, rows_ok=rows_ok, rows_quarantined=rows_quarantined,
                      quarantined_by_reason=dict(sorted(by_reason.items())), units=int(manifest["units"].sum()),
                      batches=len(manifest), bucket_count=bucket_count)


ATHENA_SCHEME = "athena://"


def prepare_configured(input_uri: str, schema: InputSchema, out_uri: str, bucket_count: int,
                       window: tuple[str, str] | None = None, storage_options: dict | None = None,
                       env: Mapping[str, str] | None = None) -> PrepResult:
    """`prepare` (DuckDB), or `prepare_athena` when the input is `athena://database.table`.

    The Athena path reads ATHENA_OUTPUT_LOCATION (query results, s3://) and ATHENA_WORKGROUP
    (default primary) from the environment; the database is the table's.
    """
    env = os.environ if env is None else env
    if not input_uri.startswith(ATHENA_SCHEME):
        return prepare(input_uri, schema, out_uri, bucket_count, window=window, storage_options=storage_options)
    table = input_uri.removeprefix(ATHENA_SCHEME)
    if "." not in table or not _TABLE_NAME.match(table):
        raise ValueError(f"{input_uri!r}: expected athena://database.table")
    if not env.get("ATHENA_OUTPUT_LOCATION", "").startswith("s3://"):
        raise ValueError("the Athena prep needs ATHENA_OUTPUT_LOCATION=s3://bucket/prefix/ for query results")
    return prepare_athena(table, schema, out_uri, bucket_count, database=table.split(".")[0],
                          output_location=env["ATHENA_OUTPUT_LOCATION"], window=window,
                          workgroup=env.get("ATHENA_WORKGROUP", "primary"), storage_options=storage_options,
                          poll_seconds=int(env.get("ATHENA_POLL_SECONDS", "5")))


# --- Input files ---------------------------------------------------------------------------------------

def _input_format(path: str) -> str | None:
    name = path.rsplit("/", 1)[-1].lower()
    if name.startswith((".", "_")):  # hidden and marker files (.crc, _SUCCESS, _metadata)
        return None
    return next((fmt for suffix, fmt in _INPUT_SUFFIXES.items() if name.endswith(suffix)), None)


def _resolve_input(source: Location) -> tuple[list[str], str]:
    """The input files (sorted) and their one format."""
    fs = source.fs
    if any(ch in source.uri for ch in "*?["):
        paths = [p for p in fs.glob(source.uri) if fs.isfile(p)]
    elif fs.isdir(source.uri):
        paths = fs.find(source.uri)
    elif fs.isfile(source.uri):
        paths = [source.uri]
    else:
        raise FileNotFoundError(f"input {source.uri!r} does not exist")
    files = sorted(source.full(p) for p in paths if _input_format(p))
    if not files:
        raise FileNotFoundError(f"input {source.uri!r} holds no {', '.join(_INPUT_SUFFIXES)} files")
    formats = {_input_format(f) for f in files}
    if len(formats) > 1:
        raise ValueError(f"input {source.uri!r} mixes formats {sorted(formats)}; prep reads one format at a time")
    return files, formats.pop()


def _read_sql(files: list[str], fmt: str) -> str:
    paths = "[" + ", ".join(_literal(f) for f in files) + "]"
    options = "union_by_name = true, hive_types_autocast = false"
    # Hive partition values stay text: a declared string like product=007 must not become 7; typed
    # columns are parsed with the other text columns. CSV is all text for the same reason, and so
    # that a stray "n/a" past the sniffer's sample is a bad row rather than a failed read.
    if fmt == "csv":
        return f"read_csv({paths}, header = true, all_varchar = true, {options})"
    # Parquet writers leave NaN out of min/max statistics; without can_have_nan DuckDB trusts them
    # and drops NaN rows from filters such as isnan(x) (duckdb/duckdb#25521).
    return f"read_parquet({paths}, {options}, can_have_nan = true)"


# --- Schema check ------------------------------------------------------------------------------------

def _type_matches(found: str, dtype: str) -> bool:
    return any(found == t or found.startswith(t + "(") for t in DTYPES[dtype])


def _check_types(schema: InputSchema, types: Mapping[str, str]
                 ) -> tuple[list[str], list[tuple[str, str, str]], list[str]]:
    """(missing, mistyped, text columns): text columns are non-string columns read as VARCHAR."""
    missing, mistyped, text_columns = [], [], []
    for column in schema.columns:
        found = types.get(column.name)
        if found is None:
            missing.append(column.name)
        elif column.dtype != "string" and found == "VARCHAR":
            text_columns.append(column.name)
        elif not _type_matches(found, column.dtype):
            mistyped.append((column.name, column.dtype, found))
    return missing, mistyped, text_columns


def _unparseable_columns(con: duckdb.DuckDBPyConnection, sql: SchemaSql, relation: str
                         ) -> list[tuple[str, str, str]]:
    """Text columns of `relation` where no non-null value parses: mistyped, not merely dirty."""
    names = [name for name in sql.schema.names if name in sql.text_columns]
    if not names:
        return []
    counts = ", ".join(f"count({_ident(n)}), count({sql.value(n)})" for n in names)
    row = con.execute(f"SELECT {counts} FROM {relation}").fetchone()
    return [(name, sql.schema.column(name).dtype, f"VARCHAR with no parseable {sql.schema.column(name).dtype} value")
            for i, name in enumerate(names) if row[2 * i] > 0 and row[2 * i + 1] == 0]


def _in_schema_order(schema: InputSchema, mistyped: list[tuple[str, str, str]]) -> list[tuple[str, str, str]]:
    return sorted(mistyped, key=lambda problem: schema.names.index(problem[0]))


# --- prepare -----------------------------------------------------------------------------------------

def prepare(input_uri: str, schema: InputSchema, out_uri: str, bucket_count: int,
            window: tuple[str, str] | None = None, storage_options: dict | None = None) -> PrepResult:
    """Validate, quarantine and bucket `input_uri` into batches under `out_uri` (see the module doc).

    `window` is [start, end) in ISO dates (or date-times) on `schema.time_column`. `storage_options`
    are `s3fs.S3FileSystem` arguments for s3:// URIs. Raises SchemaError, naming every missing or
    mistyped column, before anything is written; replaces batches, manifest and quarantine left
    under `out_uri` by an earlier run.
    """
    _check_bucket_count(bucket_count)
    _check_schema_shape(schema)
    if window is not None:
        _window_literals(schema, window)
    source = Location.parse(input_uri, storage_options)
    out = Location.parse(out_uri, storage_options)
    files, fmt = _resolve_input(source)
    with tempfile.TemporaryDirectory(prefix="prep-") as scratch, closing(duckdb.connect()) as con:
        con.execute(f"SET temp_directory = {_literal(os.path.join(scratch, 'duckdb'))}")
        if source.remote:
            con.register_filesystem(source.fs)
        read = _read_sql(files, fmt)
        types = dict(con.execute(f"SELECT column_name, column_type FROM (DESCRIBE SELECT * FROM {read})").fetchall())
        missing, mistyped, text_columns = _check_types(schema, types)
        sql = SchemaSql(schema, DUCKDB, text_columns)
        if missing or mistyped:
            raise SchemaError(missing, _in_schema_order(schema, mistyped + _unparseable_columns(con, sql, read)))
        # A local Parquet scan is cheap enough to repeat; CSV parsing and remote reads are done once.
        kind = "TEMP TABLE" if fmt == "csv" or source.remote else "TEMP VIEW"
        con.execute(f"CREATE {kind} _source AS SELECT * FROM {read}")
        unparseable = _unparseable_columns(con, sql, "_source")
        if unparseable:
            raise SchemaError([], unparseable)
        scope = sql.in_scope(window)

        by_reason = dict(con.execute(
            f"SELECT reason, count(*) FROM (SELECT {sql.reason()} AS reason FROM _source WHERE {scope}) GROUP BY reason"
        ).fetchall())
        rows_in = sum(by_reason.values())
        rows_ok = by_reason.pop(None, 0)
        duplicates = _stage_duplicates(con, sql, scope)
        if duplicates:
            by_reason["duplicate"] = duplicates
            rows_ok -= duplicates

        staging = out
        if out.remote:
            staging = Location(os.path.join(scratch, "out"), fsspec.filesystem("file"), remote=False)
        _clear_outputs(out)
        os.makedirs(staging.uri, exist_ok=True)
        if rows_ok:
            _write_batches(con, sql, scope, staging.join(BATCHES_DIR), bucket_count)
        quarantine_uri = None
        if by_reason:
            _write_quarantine(con, sql, scope, staging.join(QUARANTINE_FILE))
            quarantine_uri = out.join(QUARANTINE_FILE)
        manifest = _manifest(con, sql, staging, out, rows_ok)
        con.register("_manifest_frame", manifest)
        con.execute(f"COPY _manifest_frame TO {_literal(staging.join(MANIFEST_FILE))} (FORMAT parquet)")
        if out.remote:
            _upload(staging, out)

    if int(manifest["rows"].sum()) != rows_ok:
        raise RuntimeError(f"batches hold {int(manifest['rows'].sum())} rows but {rows_ok} rows passed the checks")
    return PrepResult(
        out_uri=out.uri,
        manifest_uri=out.join(MANIFEST_FILE),
        quarantine_uri=quarantine_uri,
        rows_in=rows_in,
        rows_ok=rows_ok,
        rows_quarantined=rows_in - rows_ok,
        quarantined_by_reason=dict(sorted(by_reason.items())),
        units=int(manifest["units"].sum()),
        batches=len(manifest),
        bucket_count=bucket_count,
    )


def _duplicate_key_hashes(con: duckdb.DuckDBPyConnection, sql: SchemaSql, scope: str) -> np.ndarray:
    """Hashes of unique keys that occur more than once among good rows (plus rare hash collisions).

    Sorting one uint64 per row in numpy is several times faster than a DuckDB GROUP BY with as many
    groups as rows; DuckDB's hash() is fine here since the hashes live only within this connection.
    """
    key = ", ".join(sql.value(name) for name in sql.schema.unique_key)
    hashes = con.execute(f"SELECT hash({key}) AS h FROM _source WHERE {scope} AND {sql.valid()}").fetchnumpy()["h"]
    hashes = np.sort(np.asarray(hashes))
    return np.unique(hashes[1:][hashes[1:] == hashes[:-1]])


def _stage_duplicates(con: duckdb.DuckDBPyConnection, sql: SchemaSql, scope: str) -> int:
    """Rank the good rows whose unique key hash repeats into `_dup_rows`; return how many are duplicates.

    `_dup_rank` 1 is the row kept for its key (the first in the order of all its values). The
    batches take every other good row from `_source` and these rows from `_dup_rows`.
    """
    con.execute("CREATE OR REPLACE TEMP TABLE _dup_hashes (h UBIGINT)")
    if not sql.schema.unique_key:
        return 0
    repeated = _duplicate_key_hashes(con, sql, scope)
    if not len(repeated):
        return 0
    con.register("_repeated_hashes", pa.table({"h": pa.array(repeated, pa.uint64())}))
    con.execute("INSERT INTO _dup_hashes SELECT h FROM _repeated_hashes")
    key = ", ".join(sql.value(name) for name in sql.schema.unique_key)
    typed = [sql.value(name) for name in sql.schema.names]
    raw = [_ident(name) for name in _source_columns(con)]
    con.execute(f"""
        CREATE TEMP TABLE _dup_rows AS
        SELECT *, row_number() OVER (PARTITION BY {key} ORDER BY {', '.join(typed + raw)}) AS _dup_rank
        FROM _source
        WHERE {scope} AND {sql.valid()} AND hash({key}) IN (SELECT h FROM _dup_hashes)""")
    return con.execute("SELECT count(*) FROM _dup_rows WHERE _dup_rank > 1").fetchone()[0]


def _source_columns(con: duckdb.DuckDBPyConnection) -> list[str]:
    return [row[0] for row in con.execute("SELECT column_name FROM (DESCRIBE _source)").fetchall()]


def _has_duplicates(con: duckdb.DuckDBPyConnection) -> bool:
    return con.execute("SELECT count(*) FROM _dup_hashes").fetchone()[0] > 0


def _write_batches(con: duckdb.DuckDBPyConnection, sql: SchemaSql, scope: str, directory: str,
                   bucket_count: int) -> None:
    typed = ", ".join(f"{sql.value(name)} AS {_ident(name)}" for name in sql.schema.names)
    select = f"SELECT {typed}, {sql.bucket(bucket_count)} AS {BUCKET_COLUMN}"
    rows = f"{select} FROM _source WHERE {scope} AND {sql.valid()}"
    if _has_duplicates(con):
        key = ", ".join(sql.value(name) for name in sql.schema.unique_key)
        rows += (f" AND hash({key}) NOT IN (SELECT h FROM _dup_hashes)"
                 f" UNION ALL {select} FROM _dup_rows WHERE _dup_rank = 1")
    con.execute(f"COPY ({rows}) TO {_literal(directory)} (FORMAT parquet, PARTITION_BY ({BUCKET_COLUMN}))")


def _write_quarantine(con: duckdb.DuckDBPyConnection, sql: SchemaSql, scope: str, path: str) -> None:
    rows = f"SELECT *, {sql.reason()} AS {REASON_COLUMN} FROM _source WHERE {scope} AND NOT ({sql.valid()})"
    if _has_duplicates(con):
        rows += f" UNION ALL SELECT * EXCLUDE (_dup_rank), 'duplicate' FROM _dup_rows WHERE _dup_rank > 1"
    con.execute(f"COPY ({rows}) TO {_literal(path)} (FORMAT parquet)")


def _manifest(con: duckdb.DuckDBPyConnection, sql: SchemaSql, staging: Location, out: Location,
              rows_ok: int) -> pd.DataFrame:
    """One row per batch file, read back from what was written.

    content_hash combines per-row hashes by count, sum and xor, so row order inside a file does not
    matter. It uses DuckDB's hash(), an order of magnitude faster than md5 per row; that hash may
    change between DuckDB releases, so the release is part of the content hash: after an upgrade
    every content hash changes at once (one round of cache misses, no false matches).
    """
    if not rows_ok:
        return pd.DataFrame({"batch_id": pd.Series(dtype="int64"), "uri": pd.Series(dtype="str"),
                             "rows": pd.Series(dtype="int64"), "units": pd.Series(dtype="int64"),
                             "content_hash": pd.Series(dtype="str")})
    columns = ", ".join(_ident(name) for name in sql.schema.names)
    unit = ", ".join(_ident(name) for name in sql.schema.unit_key)
    engine = _literal("duckdb-" + duckdb.__version__)
    files = _literal(staging.join(BATCHES_DIR, f"{BUCKET_COLUMN}=*", "*.parquet"))
    frame = con.execute(f"""
        SELECT CAST({BUCKET_COLUMN} AS BIGINT) AS batch_id, min(_file) AS uri, count(DISTINCT _file) AS files,
               count(*) AS "rows", count(DISTINCT ({unit})) AS units,
               md5(concat_ws('|', {engine}, count(*), sum(_row_hash), bit_xor(_row_hash))) AS content_hash
        FROM (SELECT {BUCKET_COLUMN}, filename AS _file, {unit}, hash({columns}) AS _row_hash
              FROM read_parquet({files}, hive_partitioning = true, hive_types = {{'{BUCKET_COLUMN}': 'BIGINT'}},
                                filename = true))
        GROUP BY {BUCKET_COLUMN} ORDER BY {BUCKET_COLUMN}""").df()
    split = frame[frame["files"] != 1]
    if len(split):
        raise RuntimeError(f"DuckDB wrote several files for bucket(s) {split['batch_id'].tolist()[:10]}")
    prefix = staging.join(BATCHES_DIR)
    frame["uri"] = [out.join(BATCHES_DIR, os.path.relpath(path, prefix).replace(os.sep, "/")) for path in frame["uri"]]
    return frame[list(MANIFEST_COLUMNS)]


def _clear_outputs(out: Location) -> None:
    """Remove what an earlier prep wrote under `out`, manifest first (it is what marks a complete run)."""
    for name in (MANIFEST_FILE, QUARANTINE_FILE):
        if out.fs.exists(out.join(name)):
            out.fs.rm(out.join(name))
    batches = out.join(BATCHES_DIR)
    if out.remote:
        if out.fs.exists(batches):
            out.fs.rm(batches, recursive=True)
    elif os.path.isdir(batches):
        shutil.rmtree(batches)


def _upload(staging: Location, out: Location) -> None:
    """Copy the staged outputs to `out`, manifest last."""
    manifest = staging.join(MANIFEST_FILE)
    local, remote = [], []
    for directory, _, names in os.walk(staging.uri):
        for path in (os.path.join(directory, name) for name in names):
            if path != manifest:
                local.append(path)
                remote.append(out.join(os.path.relpath(path, staging.uri).replace(os.sep, "/")))
    if local:
        out.fs.put(local, remote)
    out.fs.put(manifest, out.join(MANIFEST_FILE))
    out.fs.invalidate_cache()


def read_manifest(manifest_uri: str, storage_options: dict | None = None) -> pd.DataFrame:
    """The manifest `prepare` wrote, sorted by batch_id."""
    location = Location.parse(manifest_uri, storage_options)
    with location.fs.open(location.uri, "rb") as handle:
        frame = pd.read_parquet(handle)
    return frame[list(MANIFEST_COLUMNS)].sort_values("batch_id", ignore_index=True)
