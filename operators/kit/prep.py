"""Prep: validate one input table against a workload's schema, quarantine bad rows, bucket the rest.

`prepare` reads CSV or Parquet (a file, a directory, a glob; local or s3://) with one DuckDB
connection and writes, under `out_uri`:

- `batches/bucket=<id>/data_0.parquet`: the good rows, one file per non-empty bucket. A row's bucket
  is a stable md5 of its unit key modulo `bucket_count`, so every row of a unit lands in the same
  batch, on every run and on every engine (`bucketing_sql`). Only the schema's columns are written,
  typed (columns that arrived as text, e.g. from CSV, are parsed).
- `quarantine.parquet`: the bad rows (only when there are some): every input column as read, then
  `_prep_reason`, `_prep_file` and, for a CSV line that could not be parsed, `_prep_line` (the
  record's first line in the file; the header is line 1) and `_prep_raw` (its text, at most 10,000
  bytes). Reasons, the first that applies:
  `malformed:<kind>` (a CSV line that does not parse: `missing_columns`, `too_many_columns`,
  `unquoted_value` (text after a closing quote), `unclosed_quote` (a quote that never closes: that
  line alone, the lines after it are read), `invalid_encoding` for bytes that are not UTF-8,
  `line_size_over_maximum` for a line over MAX_LINE_BYTES),
  `null:<col>` (missing where the schema forbids it: NULL, an empty field, or NaN, which means
  "missing" in every numeric column; a nullable float column gets NULL for NaN),
  `non_finite:<col>` (infinity in a numeric column: inf, Infinity, +inf, -inf, 1e400, any case),
  `non_numeric:<col>` / `non_date:<col>` (text that does not parse: the schema's NUMBER_TEXT and
  DATE_TEXT decide, as `batch-worker try` does), `non_integer:<col>` (an int column's number that
  is not whole: "0.5" is never rounded), `out_of_range:<col>`
  (outside Column.min/max), then, among the rows that passed, `duplicate` (rows sharing a
  `unique_key` with the same value in every schema column: the one that sorts first on all its
  values is kept) and `conflicting_duplicate` (rows sharing a `unique_key` that differ in some
  schema column: all of them are quarantined, since none is known to be right).
- `manifest.parquet`: one row per batch (batch_id, uri, rows, units, content_hash).
- `_PREPARED.json`, written last: the fingerprint of what was prepared and the counts. A later
  `prepare` into the same `out_uri` with the same fingerprint returns those counts and writes
  nothing (a cleared prepare task of the same run, on unchanged input); with `reuse_root`, a
  prepare of the same fingerprint into another folder under that root (another run of the
  pipeline) is copied, hard-linked where possible, found through `<root>/prep-index/`. The
  fingerprint covers every input file's path, size, modification time and inode (ETag on S3),
  the schema, the window, the batching and quarantine limits, prep's own code and DuckDB's
  release; the reuse also needs the manifest and every batch it lists to be in place.

rows_in = rows_ok + rows_quarantined, counting every unparseable CSV record as one row. For CSV,
rows_in is checked against the files' own line counts, made apart from the CSV parser: every line
is in a record (one line, or several joined by a quoted field's line breaks; empty lines are none),
and a file whose records do not cover its lines is refused (see "CSV: every line of a file is a
row" below).

Reading: exactly the files listed, each once, whatever characters their names hold (DuckDB
treats every path as a glob, so prep escapes them). CSV is RFC 4180 with a header line: the
delimiter is taken from the header (`,`, `;`, tab or `|`), the quote and escape are `"`, nothing
is guessed from a sample, every value is read as text and parsed per the schema. A CSV file is
read as gzip when its bytes are gzip, whatever its name, and as text otherwise. String columns
of the unit and unique keys lose leading and trailing blanks (Unicode white space, zero-width
spaces and byte order marks: `batch_worker.schema.BLANK_CODES`) in both SQL dialects. A `key=value` folder above the
files gives a column `key` when the files lack one; when the files carry that column too, their
values are used and a value that disagrees with its folder is an error naming the file.

Names: every column prep adds starts with `_prep_` (`batch_worker.schema.RESERVED_PREFIX`); an
input or schema column with that prefix is refused before anything is computed.

Limits: when more than `max_quarantined_share` of the rows (in the window) are quarantined, or a
window holds no usable row, `prepare` writes the quarantine, no batches and no manifest, and
raises `PrepError` with the counts by reason, where each reason first occurs and what to do.

Rows outside the optional `window` on `schema.time_column` are not part of the run; rows whose
time value is missing or unparseable stay in it, to be quarantined. A malformed CSV record is
placed by the time value read from its own text (the field at the time column's place in its
header), by the same rule: one whose date cannot be read is quarantined in every window. Every
step is set-based SQL; only a 64-bit hash per row leaves DuckDB, to look for duplicate keys (see
`_duplicate_key_hashes`).

`athena_ctas_sql` builds the same predicates, duplicate rule and bucket expression for Athena (a
CTAS that writes the good rows bucketed by that expression); `run_athena_prep` submits it.
`prepare_configured` is the entry point for a user-given `input_uri`: it allows only data under
DATA_ROOT and the prefixes in AIRBATCH_INPUT_PREFIXES.
"""
from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import difflib
import hashlib
import io
import json
import logging
import math
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from contextlib import closing
from dataclasses import dataclass

import duckdb
import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
from batch_worker.schema import (BLANK_CODES, DATE_TEXT, DTYPES, INTEGER_TEXT, NUMBER_TEXT, REASON_ADVICE,
                                 RESERVED_PREFIX, InputSchema, is_reserved, quarantine_refusal, reason_lines)
from batch_worker.storage import Location

from operators.kit.storage import data_root

log = logging.getLogger(__name__)

BATCHES_DIR = "batches"
MANIFEST_FILE = "manifest.parquet"
PREPARED_FILE = "_PREPARED.json"
QUARANTINE_FILE = "quarantine.parquet"
#: The partition folder of a batch (`bucket=<id>`); the batch files themselves hold only schema columns.
BUCKET_COLUMN = "bucket"
REASON_COLUMN = RESERVED_PREFIX + "reason"
FILE_COLUMN = RESERVED_PREFIX + "file"
LINE_COLUMN = RESERVED_PREFIX + "line"
RAW_COLUMN = RESERVED_PREFIX + "raw"
RANK_COLUMN = RESERVED_PREFIX + "rank"
CONFLICT_COLUMN = RESERVED_PREFIX + "conflict"
ROW_HASH_COLUMN = RESERVED_PREFIX + "row_hash"
DUPLICATE = "duplicate"
CONFLICTING_DUPLICATE = "conflicting_duplicate"
MAX_BUCKETS = 10_000
DEFAULT_MAX_QUARANTINED_SHARE = 0.1
#: Comma-separated local folders and s3://bucket/prefix that `input_uri` may name, besides DATA_ROOT.
INPUT_PREFIXES_SETTING = "AIRBATCH_INPUT_PREFIXES"
#: Hex digits of the unit key's md5 that pick its bucket: 56 bits stay non-negative in Athena's
#: signed BIGINT, so both engines compute the same modulo.
KEY_HEX_DIGITS = 14
MANIFEST_COLUMNS = ("batch_id", "uri", "rows", "units", "content_hash")

_INPUT_SUFFIXES = {".parquet": "parquet", ".csv": "csv", ".csv.gz": "csv"}
_KEY_SEPARATOR = "chr(31)"  # ASCII unit separator between key values
_NULL_KEY_MARKER = "chr(30)"  # stands for a NULL key value, which would otherwise vanish from the text
#: Trimmed from both ends of key strings and values' text: the schema's blanks (batch-worker try's too).
_BLANKS = " || ".join(f"chr({code})" for code in BLANK_CODES)
_INFINITY_WORDS = ("inf", "+inf", "-inf", "infinity", "+infinity", "-infinity")
_NAN_WORDS = ("nan", "+nan", "-nan")
_CSV_DELIMITERS = (",", ";", "\t", "|")
_MAX_HEADER_BYTES = 1 << 20
_GLOB_CHARACTERS = re.compile(r"([\[\]*?{}])")
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
    bucket_count: int  # the buckets the rows were hashed into: the limit, or fewer chosen by rows_per_batch

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class PrepError(ValueError):
    """The input cannot be prepared as it is; the message says where and what to do."""


class EmptyWindow(PrepError):
    """The input has no row in the run's window (rows outside it, or none at all)."""


class SchemaError(PrepError):
    """The input's columns do not match the schema; the message names every problem."""

    def __init__(self, missing: Sequence[str], mistyped: Sequence[tuple[str, str, str]],
                 near: Mapping[str, Sequence[str]] | None = None, source: str = ""):
        self.missing = tuple(missing)
        self.mistyped = tuple(mistyped)  # (column, expected dtype, found type)
        self.near = {name: tuple(found) for name, found in (near or {}).items() if found}
        problems = []
        if self.missing:
            problems.append("missing column(s): " + ", ".join(
                repr(name) + (f" (the input has {', '.join(map(repr, self.near[name]))})" if name in self.near else "")
                for name in self.missing))
        if self.mistyped:
            problems.append("mistyped column(s): " + ", ".join(
                f"{name!r} (expected {expected}, found {found})" for name, expected, found in self.mistyped))
        advice = []
        if self.near:
            advice.append("rename the input's columns to the schema's names (names are compared exactly)")
        if self.mistyped:
            advice.append("write each column with its schema type")
        where = f"input {source} " if source else "input "
        super().__init__(where + "does not match the schema: " + "; ".join(problems)
                         + ("; " + " and ".join(advice) if advice else ""))


def near_matches(name: str, found: Iterable[str]) -> list[str]:
    """Columns of `found` that look like `name`: equal but for case and blanks first, then close spellings."""
    found = list(found)
    squeezed = re.sub(r"[\s_-]", "", name).lower()
    same = [other for other in found if re.sub(r"[\s_-]", "", other).lower() == squeezed]
    close = difflib.get_close_matches(name.lower(), [other.lower() for other in found], n=3, cutoff=0.75)
    similar = [other for other in found if other.lower() in close and other not in same]
    return same + similar


# --- SQL shared by the DuckDB and the Athena paths -------------------------------------------------

@dataclass(frozen=True)
class Dialect:
    """How one SQL engine spells the few things prep's generated SQL needs."""

    name: str
    types: Mapping[str, str]  # schema dtype -> the engine's type a text value is parsed to
    try_cast: str  # format string with {expr} and {type}
    is_nan: str  # format string with {expr}
    is_infinite: str  # format string with {expr}
    trim: str  # remove {chars} from both ends of {expr}
    md5_hex: str  # lowercase hex md5 of a string; format string with {expr}
    hex_prefix_to_int: str  # the first KEY_HEX_DIGITS hex digits as an integer; format string with {expr}
    text: str  # a value as text; format string with {expr}
    matches: str  # whether {expr} matches the regular expression {pattern} (RE2 in both); format string


DUCKDB = Dialect(
    name="duckdb",
    types={"string": "VARCHAR", "int": "BIGINT", "float": "DOUBLE", "date": "DATE"},
    try_cast="TRY_CAST({expr} AS {type})",
    is_nan="isnan({expr})",
    is_infinite="isinf({expr})",
    # DuckDB's trim with a set of characters reads the set again for every value (about 30 ns a character,
    # unless the column arrives dictionary-encoded); most keys start and end with a printable ASCII
    # character and need no trim, which ord() of the first and last character tells cheaply.
    trim=("CASE WHEN ord({expr}) BETWEEN 33 AND 126 AND ord({expr}[-1]) BETWEEN 33 AND 126 THEN {expr} "
          "ELSE trim({expr}, {chars}) END"),
    md5_hex="md5({expr})",
    hex_prefix_to_int=f"CAST('0x' || left({{expr}}, {KEY_HEX_DIGITS}) AS UBIGINT)",
    text="CAST({expr} AS VARCHAR)",
    matches="regexp_matches({expr}, {pattern})",
)
ATHENA = Dialect(
    name="athena",
    types={"string": "varchar", "int": "bigint", "float": "double", "date": "date"},
    try_cast="try_cast({expr} AS {type})",
    is_nan="is_nan({expr})",
    is_infinite="is_infinite({expr})",
    trim="trim({chars} FROM {expr})",
    md5_hex="lower(to_hex(md5(to_utf8({expr}))))",
    hex_prefix_to_int=f"from_base(substr({{expr}}, 1, {KEY_HEX_DIGITS}), 16)",
    text="CAST({expr} AS varchar)",
    matches="regexp_like({expr}, {pattern})",
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
    (never NULL), true for a bad row, so `NOT (check)` can filter safely. String key columns are
    trimmed; NaN is "missing" and infinity is "non-finite" in every numeric column, whether the
    engine parsed it or it is spelled out in text the engine does not parse (Athena's cast reads
    "Infinity" but not "inf").
    """

    def __init__(self, schema: InputSchema, dialect: Dialect | str = DUCKDB, text_columns: Iterable[str] = ()):
        self.schema = schema
        self.dialect = DIALECTS[dialect] if isinstance(dialect, str) else dialect
        self.text_columns = frozenset(text_columns)
        self.key_columns = frozenset(schema.unit_key) | frozenset(schema.unique_key)

    def parsed(self, name: str) -> str:
        """The column's value in its schema type (NULL where text does not parse)."""
        column = self.schema.column(name)
        if name in self.text_columns:
            return self.dialect.try_cast.format(expr=_ident(name), type=self.dialect.types[column.dtype])
        if column.dtype == "string" and name in self.key_columns:
            return self.dialect.trim.format(expr=_ident(name), chars=_BLANKS)
        return _ident(name)

    def value(self, name: str) -> str:
        """The typed value of a column as the batches hold it: NaN becomes NULL in a nullable float column."""
        column = self.schema.column(name)
        if column.dtype == "float" and column.nullable:
            return f"CASE WHEN {self.missing(name)} THEN NULL ELSE {self.parsed(name)} END"
        return self.parsed(name)

    def _spelled(self, name: str, words: Sequence[str]) -> str | None:
        """True where a numeric text column holds one of `words` (any case, blanks around)."""
        if name not in self.text_columns or self.schema.column(name).dtype not in ("int", "float"):
            return None
        text = "lower(" + self.dialect.trim.format(expr=_ident(name), chars=_BLANKS) + ")"
        return f"coalesce({text} IN ({', '.join(map(_literal, words))}), false)"

    def _matches(self, name: str, pattern: str) -> str:
        """True where the column's text, blanks around aside, is all one match of `pattern` (the schema's)."""
        text = self.dialect.trim.format(expr=_ident(name), chars=_BLANKS)
        return f"coalesce({self.dialect.matches.format(expr=text, pattern=_literal('^(?:' + pattern + ')$'))}, false)"

    def missing(self, name: str) -> str:
        tests = [f"{_ident(name)} IS NULL"]
        if self.schema.column(name).dtype == "float":
            tests.append(f"coalesce({self.dialect.is_nan.format(expr=self.parsed(name))}, false)")
        tests += [spelled for spelled in [self._spelled(name, _NAN_WORDS)] if spelled]
        return "(" + " OR ".join(tests) + ")" if len(tests) > 1 else tests[0]

    def non_finite(self, name: str) -> str | None:
        tests = []
        if self.schema.column(name).dtype == "float":
            tests.append(f"coalesce({self.dialect.is_infinite.format(expr=self.parsed(name))}, false)")
        tests += [spelled for spelled in [self._spelled(name, _INFINITY_WORDS)] if spelled]
        return ("(" + " OR ".join(tests) + ")" if len(tests) > 1 else tests[0]) if tests else None

    def checks(self) -> list[tuple[str, str]]:
        """(reason, predicate true for a bad row), most fundamental first: nulls, infinities, parse errors, ranges."""
        nulls, infinite, parse_errors, ranges = [], [], [], []
        for column in self.schema.columns:
            name, raw, parsed = column.name, _ident(column.name), self.parsed(column.name)
            if not column.nullable:
                nulls.append((f"null:{name}", self.missing(name)))
            non_finite = self.non_finite(name)
            if non_finite:
                infinite.append((f"non_finite:{name}", non_finite))
            if name in self.text_columns:
                # The schema's patterns decide what text is a value (Column.read_text, which batch-worker try
                # calls): the engines' casts read more ("1_000", "0x10") and round an int's "0.5" to 1.
                kind = "non_date" if column.dtype == "date" else "non_numeric"
                spelled = self._spelled(name, _NAN_WORDS + _INFINITY_WORDS)
                pattern = DATE_TEXT if column.dtype == "date" else NUMBER_TEXT
                unparsed = (f"{raw} IS NOT NULL AND ({parsed} IS NULL OR NOT {self._matches(name, pattern)})"
                            + (f" AND NOT {spelled}" if spelled else ""))
                parse_errors.append((f"{kind}:{name}", f"({unparsed})"))
                if column.dtype == "int":
                    parse_errors.append((f"non_integer:{name}", f"({self._matches(name, NUMBER_TEXT)} AND NOT "
                                                                f"{self._matches(name, INTEGER_TEXT)})"))
            if column.dtype in ("int", "float") and (column.min is not None or column.max is not None):
                value = self.value(name)
                outside = [f"{value} < {_number(column.min)}"] if column.min is not None else []
                outside += [f"{value} > {_number(column.max)}"] if column.max is not None else []
                test = " OR ".join(outside)
                if column.dtype == "float" and not column.nullable:  # NaN compares above every number
                    test = f"NOT {self.missing(name)} AND ({test})"
                ranges.append((f"out_of_range:{name}", f"coalesce({test}, false)"))
        return nulls + infinite + parse_errors + ranges

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

    def duplicate_window(self, tie_breakers: Sequence[str] = ()) -> str:
        """Two columns over good rows grouped by unique_key: RANK_COLUMN (1 is the row kept, the first in
        the order of its typed values, then `tie_breakers`) and CONFLICT_COLUMN (the group's rows differ
        in some schema column, so none is kept)."""
        group = "PARTITION BY " + ", ".join(self.value(name) for name in self.schema.unique_key)
        order = ", ".join([self.value(name) for name in self.schema.names] + list(tie_breakers))
        row = self.key_text(self.schema.names)
        return (f"row_number() OVER ({group} ORDER BY {order}) AS {RANK_COLUMN}, "
                f"min({row}) OVER ({group}) IS DISTINCT FROM max({row}) OVER ({group}) AS {CONFLICT_COLUMN}")

    @staticmethod
    def duplicate_reason() -> str:
        """The reason of a row ranked by `duplicate_window`, NULL for the row kept."""
        return (f"CASE WHEN {CONFLICT_COLUMN} THEN {_literal(CONFLICTING_DUPLICATE)} "
                f"WHEN {RANK_COLUMN} > 1 THEN {_literal(DUPLICATE)} END")


def bucketing_sql(schema: InputSchema, bucket_count: int, dialect: Dialect | str = DUCKDB,
                  text_columns: Iterable[str] = ()) -> str:
    """The SQL expression of a row's bucket id in `dialect` (the same ids in DuckDB and Athena).

    Stable across processes, runs and engine versions: the first 56 bits of the md5 of the unit key
    values (as text, joined with chr(31)) modulo `bucket_count`. String, integer and date keys give
    the same text in both engines; float keys do not (the engines format doubles differently).
    """
    return SchemaSql(schema, dialect, text_columns).bucket(bucket_count)


def buckets_for(rows: int, bucket_count: int, rows_per_batch: int | None) -> int:
    """How many buckets `rows` good rows are hashed into: `bucket_count`, or fewer when `rows_per_batch`
    (a target, 0 or None: none) asks for larger batches.

    The count is rows / rows_per_batch rounded up to a power of two, so an input that grows or shrinks
    a little keeps its batching (and, on unchanged units, its cache keys); `bucket_count` is the most.
    Fewer, larger batches cost less: each batch is a few files and a fixed share of a worker's time.
    """
    _check_bucket_count(bucket_count)
    if isinstance(rows_per_batch, bool) or not isinstance(rows_per_batch, (int, type(None))) or (rows_per_batch or 0) < 0:
        raise ValueError(f"rows_per_batch must be a whole number of rows (0: exactly bucket_count batches), "
                         f"got {rows_per_batch!r}")
    if not rows_per_batch:
        return bucket_count
    wanted = max(1, -(-rows // rows_per_batch))
    return min(bucket_count, 1 << (wanted - 1).bit_length())


def _check_bucket_count(bucket_count: int) -> None:
    if isinstance(bucket_count, bool) or not isinstance(bucket_count, int) or not 1 <= bucket_count <= MAX_BUCKETS:
        raise ValueError(f"bucket_count must be an integer in 1..{MAX_BUCKETS}, got {bucket_count!r}")


def _check_share(max_quarantined_share: float) -> None:
    if (isinstance(max_quarantined_share, bool) or not isinstance(max_quarantined_share, (int, float))
            or not 0 <= max_quarantined_share <= 1):
        raise ValueError(f"max_quarantined_share must be a number in 0..1, got {max_quarantined_share!r}")


def _check_schema_shape(schema: InputSchema) -> None:
    if not schema.unit_key:
        raise ValueError("schema.unit_key is empty: prep needs a unit key to bucket rows")
    names = set(schema.names)
    for role, keys in (("unit_key", schema.unit_key), ("unique_key", schema.unique_key),
                       ("time_column", (schema.time_column,) if schema.time_column else ())):
        unknown = [key for key in keys if key not in names]
        if unknown:
            raise ValueError(f"schema.{role} names column(s) {unknown} that are not in schema.columns")
    clashes = [name for name in schema.names if name.lower() == BUCKET_COLUMN or is_reserved(name)]
    if clashes:
        raise ValueError(f"schema column(s) {clashes} clash with the names prep uses ({BUCKET_COLUMN!r} and the "
                         f"prefix {RESERVED_PREFIX!r}); rename them")


# --- Athena ------------------------------------------------------------------------------------------

def athena_ctas_sql(source_table: str, schema: InputSchema, target_table: str, external_location: str,
                    bucket_count: int, window: tuple[str, str] | None = None) -> str:
    """A CTAS that writes the good rows of `source_table` as Parquet, bucketed like `prepare` does.

    Same checks, window, duplicate rule and bucket expression as the DuckDB path (`SchemaSql` in
    the Athena dialect). Every non-string column is try_cast to its type, so string-typed source
    tables (CSV tables) are parsed as `prepare` parses CSV. The table is bucketed by the computed
    `bucket` column: with Hive bucketing an integer v < bucket_count lands in bucket file v, so
    Athena's buckets are `prepare`'s batch ids. Of rows sharing a unique_key, the first is kept
    when they are identical and none when they conflict. Bad rows are left out (no quarantine table).
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
        query = (f"SELECT {columns}, {BUCKET_COLUMN} FROM (\n"
                 f"SELECT *, {SchemaSql(schema, ATHENA).duplicate_window()}\n"
                 f"FROM (\n{query}\n)) WHERE {RANK_COLUMN} = 1 AND NOT {CONFLICT_COLUMN}")
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
    """Counts of the rows the CTAS leaves out, by reason (the DuckDB path's reasons, duplicates included)."""
    sql = SchemaSql(schema, ATHENA, (c.name for c in schema.columns if c.dtype != "string"))
    where = f"\nWHERE {sql.in_scope(window)}" if window else ""
    typed = ", ".join(f"{sql.value(name)} AS {_ident(name)}" for name in schema.names)
    checked = f"SELECT {sql.reason()} AS {REASON_COLUMN}, {typed} FROM {source_table}{where}"
    rows = f"SELECT {REASON_COLUMN} FROM ({checked})"
    if schema.unique_key:
        ranked = (f"SELECT {SchemaSql(schema, ATHENA).duplicate_window()} FROM ({checked}) "
                  f"WHERE {REASON_COLUMN} IS NULL")
        rows = (f"SELECT {REASON_COLUMN} FROM ({checked}) WHERE {REASON_COLUMN} IS NOT NULL\n"
                f"UNION ALL SELECT {SchemaSql.duplicate_reason()} AS {REASON_COLUMN} FROM ({ranked})")
    return (f"SELECT {REASON_COLUMN} AS reason, count(*) AS n FROM ({rows})\n"
            f"WHERE {REASON_COLUMN} IS NOT NULL GROUP BY {REASON_COLUMN} ORDER BY {REASON_COLUMN}")


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
                   storage_options: dict | None = None,
                   max_quarantined_share: float = DEFAULT_MAX_QUARANTINED_SHARE) -> PrepResult:
    """`prepare` at scale: the same checks and buckets as an Athena CTAS into `out_uri`/batches/.

    Three queries through the provider's AthenaHook (what its AthenaOperator runs): the CTAS
    (`athena_ctas_sql`), the counts of left-out rows by reason (`athena_quarantine_sql`; the rows
    themselves stay in the source table), and the manifest (`athena_manifest_sql`), written as
    `out_uri`/manifest.parquet unless the quarantined share is above `max_quarantined_share`.
    """
    from airflow.providers.amazon.aws.hooks.athena import AthenaHook

    _check_share(max_quarantined_share)
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
    rows_ok = int(manifest["rows"].sum())
    rows_quarantined = sum(by_reason.values())
    _check_limits(f"athena://{source_table}", schema, window, rows_ok + rows_quarantined, rows_ok, by_reason,
                  max_quarantined_share)
    _write_manifest(out, manifest)
    return PrepResult(out_uri=out.uri, manifest_uri=out.join(MANIFEST_FILE), quarantine_uri=None,
                      rows_in=rows_ok + rows_quarantined, rows_ok=rows_ok, rows_quarantined=rows_quarantined,
                      quarantined_by_reason=dict(sorted(by_reason.items())), units=int(manifest["units"].sum()),
                      batches=len(manifest), bucket_count=bucket_count)


ATHENA_SCHEME = "athena://"


def prepare_configured(input_uri: str, schema: InputSchema, out_uri: str, bucket_count: int,
                       window: tuple[str, str] | None = None, storage_options: dict | None = None,
                       env: Mapping[str, str] | None = None,
                       max_quarantined_share: float = DEFAULT_MAX_QUARANTINED_SHARE,
                       rows_per_batch: int | None = None, reuse_root: str | None = None) -> PrepResult:
    """`prepare` (DuckDB) of data under the allowed prefixes, or `prepare_athena` for `athena://database.table`.

    This is the entry point for a user-given `input_uri`: a path or s3:// URI must lie under
    DATA_ROOT or a prefix of AIRBATCH_INPUT_PREFIXES (`input_prefixes`), and so must every file a
    folder or glob leads to. The Athena path reads ATHENA_OUTPUT_LOCATION (query results, s3://)
    and ATHENA_WORKGROUP (default primary) from the environment; the database is the table's.
    `rows_per_batch` and `reuse_root` apply to the DuckDB path; Athena's CTAS writes `bucket_count` buckets.
    """
    env = os.environ if env is None else env
    if not input_uri.startswith(ATHENA_SCHEME):
        return prepare(input_uri, schema, out_uri, bucket_count, window=window, storage_options=storage_options,
                       max_quarantined_share=max_quarantined_share, allowed_prefixes=input_prefixes(env),
                       rows_per_batch=rows_per_batch, reuse_root=reuse_root)
    table = input_uri.removeprefix(ATHENA_SCHEME)
    if "." not in table or not _TABLE_NAME.match(table):
        raise ValueError(f"{input_uri!r}: expected athena://database.table")
    if not env.get("ATHENA_OUTPUT_LOCATION", "").startswith("s3://"):
        raise ValueError("the Athena prep needs ATHENA_OUTPUT_LOCATION=s3://bucket/prefix/ for query results")
    return prepare_athena(table, schema, out_uri, bucket_count, database=table.split(".")[0],
                          output_location=env["ATHENA_OUTPUT_LOCATION"], window=window,
                          workgroup=env.get("ATHENA_WORKGROUP", "primary"), storage_options=storage_options,
                          poll_seconds=int(env.get("ATHENA_POLL_SECONDS", "5")),
                          max_quarantined_share=max_quarantined_share)


# --- Where input may come from -------------------------------------------------------------------------

def input_prefixes(env: Mapping[str, str] | None = None) -> list[str]:
    """DATA_ROOT and the prefixes of AIRBATCH_INPUT_PREFIXES: where a user-given input_uri may point."""
    env = os.environ if env is None else env
    root = env.get("DATA_ROOT")
    if not root:
        root = data_root()
    extra = [prefix.strip() for prefix in env.get(INPUT_PREFIXES_SETTING, "").split(",")]
    return [root, *(prefix for prefix in extra if prefix)]


def _normalised_prefix(prefix: str) -> str:
    if prefix.startswith("s3://"):
        return prefix.rstrip("/")
    if "://" in prefix:
        raise ValueError(f"{INPUT_PREFIXES_SETTING}/DATA_ROOT entry {prefix!r}: use a local path or s3://bucket/prefix")
    return os.path.realpath(prefix)


def _is_under(path: str, prefix: str) -> bool:
    separator = "/" if prefix.startswith("s3://") else os.sep
    return path == prefix or path.startswith(prefix.rstrip(separator) + separator)


def _outside_message(what: str, prefixes: Sequence[str]) -> str:
    return (f"{what} is outside the allowed input locations ({', '.join(prefixes)}): put the data under "
            f"DATA_ROOT, or add its folder or s3://bucket/prefix to {INPUT_PREFIXES_SETTING} (comma-separated)")


def check_input_uri(input_uri: str, prefixes: Sequence[str]) -> None:
    """Refuse an input_uri that is not a local path or s3:// URI under one of `prefixes`.

    Local paths are compared after resolving `..` and symbolic links; an s3:// URI may not hold `.`
    or `..` segments. Files found under an allowed folder are checked again as they are listed.
    """
    scheme, sep, rest = input_uri.partition("://")
    if sep and scheme != "s3":
        raise PrepError(f"input_uri {input_uri!r}: scheme {scheme}:// is not accepted; give a local path or an "
                        f"s3:// URI under DATA_ROOT or {INPUT_PREFIXES_SETTING}")
    allowed = [_normalised_prefix(prefix) for prefix in prefixes]
    if sep:
        if any(part in (".", "..") for part in rest.split("/")):
            raise PrepError(f"input_uri {input_uri!r} holds a '.' or '..' segment; give the plain s3:// URI")
        target = "s3://" + rest.rstrip("/")
    else:
        target = os.path.realpath(_literal_part(input_uri))
    if not any(_is_under(target, prefix) for prefix in allowed if prefix.startswith("s3://") == bool(sep)):
        raise PrepError(_outside_message(f"input_uri {input_uri!r}" + (f" (resolved: {target})" if not sep else ""),
                                         prefixes))


def _literal_part(path: str) -> str:
    """The path itself if it exists, else the folders before its first glob character."""
    if os.path.lexists(path) or not re.search(r"[*?\[{]", path):
        return path
    head = re.split(r"[*?\[{]", path, maxsplit=1)[0]
    return os.path.dirname(head) or "."


# --- Input files ---------------------------------------------------------------------------------------

def _input_format(path: str) -> str | None:
    name = path.rsplit("/", 1)[-1].lower()
    if name.startswith((".", "_")):  # hidden and marker files (.crc, _SUCCESS, _metadata)
        return None
    return next((fmt for suffix, fmt in _INPUT_SUFFIXES.items() if name.endswith(suffix)), None)


def _local_files(root: str, allowed: Sequence[str] | None) -> list[str]:
    """Files under a local folder; a link is followed only where it resolves inside an allowed prefix."""
    found, seen, folders = [], set(), [root]
    while folders:
        folder = folders.pop()
        real = os.path.realpath(folder)
        if real in seen:
            continue
        seen.add(real)
        _require_allowed(folder, real, allowed)
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.is_dir():
                    folders.append(entry.path)
                elif entry.is_file() and _input_format(entry.path):
                    found.append(entry.path)
    return found


def _require_allowed(path: str, real: str, allowed: Sequence[str] | None) -> None:
    if allowed is not None and not any(_is_under(real, prefix) for prefix in map(_normalised_prefix, allowed)
                                       if not prefix.startswith("s3://")):
        raise PrepError(_outside_message(f"{path} (resolved: {real})", allowed))


def _resolve_input(source: Location, allowed: Sequence[str] | None = None) -> tuple[list[str], str]:
    """The input files (sorted) and their one format. An existing path is taken as itself, whatever
    characters its name holds; only a path that does not exist is a glob."""
    fs = source.fs
    if source.remote:
        fs.invalidate_cache()  # s3fs keeps listings per process: a file added since must be seen
    if fs.isdir(source.uri):
        paths = (_local_files(source.uri, allowed) if not source.remote
                 else [source.full(p) for p in fs.find(source.uri)])
    elif fs.isfile(source.uri):
        paths = [source.uri]
    elif re.search(r"[*?\[]", source.uri):
        paths = [source.full(p) for p in fs.glob(source.uri) if fs.isfile(p)]
    else:
        raise FileNotFoundError(f"input {source.uri!r} does not exist")
    files = sorted({p for p in paths if _input_format(p)})
    for path in files:
        if source.remote:
            if allowed is not None and not any(_is_under(path, _normalised_prefix(prefix)) for prefix in allowed):
                raise PrepError(_outside_message(path, allowed))
        else:
            _require_allowed(path, os.path.realpath(path), allowed)
    if not files:
        raise FileNotFoundError(f"input {source.uri!r} holds no {', '.join(_INPUT_SUFFIXES)} files")
    formats = {_input_format(f) for f in files}
    if len(formats) > 1:
        raise ValueError(f"input {source.uri!r} mixes formats {sorted(formats)}; prep reads one format at a time")
    return files, formats.pop()


def _as_glob_literal(path: str) -> str:
    """A path DuckDB's globbing (local, or fsspec's for s3://) matches only to itself."""
    return _GLOB_CHARACTERS.sub(r"[\1]", path)


def _path_list(files: Sequence[str]) -> str:
    return "[" + ", ".join(_literal(_as_glob_literal(f)) for f in files) + "]"


#: Bytes that open a file which is not CSV text: (magic, what the file holds, what to do).
_NOT_CSV = (
    (re.compile(rb"\x28\xb5\x2f\xfd"), "zstd-compressed data", "decompress it (zstd -d), or compress it with gzip"),
    (re.compile(rb"BZh[1-9]1AY&SY"), "bzip2-compressed data", "decompress it (bunzip2), or compress it with gzip"),
    (re.compile(rb"\xfd7zXZ\x00"), "xz-compressed data", "decompress it (xz -d), or compress it with gzip"),
    (re.compile(rb"PK\x03\x04"), "a zip archive", "unzip it and give the CSV file(s) inside"),
    (re.compile(rb"PAR1[\x00-\x08\x0e-\x1f]"), "Parquet", "name it .parquet"),
)


def _csv_compression(path: str, head: bytes) -> str:
    """'gzip' or 'none', from a CSV file's first bytes whatever its name says (a .csv of gzip bytes is read
    as gzip, a .csv.gz of plain text as text); PrepError for another compression or format."""
    if head.startswith(b"\x1f\x8b"):
        return "gzip"
    for magic, what, advice in _NOT_CSV:
        if magic.match(head):
            raise PrepError(f"{path}: the file holds {what}, not CSV text; {advice} (prep reads CSV as plain text "
                            "or gzip, whatever the file is named)")
    return "none"


def _open_csv(fs: fsspec.AbstractFileSystem, path: str, compression: str):
    """The file's CSV bytes (decompressed): what DuckDB reads with `compression`."""
    return fs.open(path, "rb", compression=None if compression == "none" else compression)


def _csv_header(fs: fsspec.AbstractFileSystem, path: str) -> tuple[str, tuple[str, ...], str]:
    """(delimiter, column names, compression) from a CSV file's first bytes and first line, read as RFC 4180."""
    with fs.open(path, "rb") as handle:
        head = handle.read(_MAX_HEADER_BYTES)
    compression = _csv_compression(path, head[:16])
    if compression != "none":
        try:
            with _open_csv(fs, path, compression) as handle:
                head = handle.read(_MAX_HEADER_BYTES)
        except (OSError, EOFError) as exc:
            raise PrepError(f"{path}: the file starts like {compression} data but cannot be decompressed "
                            f"({exc}); give the complete file, or the CSV text itself") from None
    line = head.split(b"\n", 1)[0]
    try:
        text = line.decode("utf-8-sig").rstrip("\r\n")
    except UnicodeDecodeError as exc:
        raise PrepError(f"{path}: the header line is not UTF-8 (byte {exc.object[exc.start]:#04x} at byte "
                        f"{exc.start}); save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)") from None
    if not text.strip():
        raise PrepError(f"{path}: line 1 is empty; the first line of a CSV file must name its columns")
    outside_quotes = re.sub(r'"[^"]*"', "", text)
    delimiter = max(_CSV_DELIMITERS, key=outside_quotes.count)
    delimiter = delimiter if outside_quotes.count(delimiter) else ","
    try:
        names = tuple(next(csv.reader([text], delimiter=delimiter, quotechar='"', doublequote=True, strict=True)))
    except csv.Error as exc:
        raise PrepError(f"{path}: line 1 (the header) is not valid CSV ({exc}); quote names with \"\"") from None
    blank = [i + 1 for i, name in enumerate(names) if not name.strip()]
    if blank:
        raise PrepError(f"{path}: line 1 (the header) has no name for column(s) {blank}; name every column")
    lowered = [name.lower() for name in names]
    repeated = sorted({name for name in names if lowered.count(name.lower()) > 1})
    if repeated:
        raise PrepError(f"{path}: line 1 (the header) repeats column(s) {repeated} (names are compared without "
                        "case); give each column its own name")
    return delimiter, names, compression


def _partition_keys(files: Sequence[str]) -> list[str]:
    """The `key=value` folder names every file sits under, in path order."""
    per_file = [[part.split("=", 1)[0] for part in re.split(r"[/\\]", path)[:-1] if "=" in part.strip("=")]
                for path in files]
    return [key for key in dict.fromkeys(per_file[0]) if all(key in keys for keys in per_file[1:])]


def _folder_value(key: str) -> str:
    """SQL: the value of `key=` in the row's file path, NULL where the folder has none."""
    pattern = r"(^|[/\\])" + re.escape(key) + r"=([^/\\]*)[/\\]"
    return f"nullif(regexp_extract({FILE_COLUMN}, {_literal(pattern)}, 2), '')"


# --- CSV: every line of a file is a row, read or quarantined ------------------------------------------
#
# DuckDB's CSV reader can lose lines without a word: a quote that never closes takes every later line into
# one rejected record (of which it keeps the first 10,000 bytes), and a line longer than its read buffer
# vanishes. So prep counts each file's lines itself, with a streaming count of line breaks that does not
# parse anything, and checks that the records DuckDB read, good and rejected, cover exactly those lines:
#
# - A record is one line, or several when a quoted field holds line breaks and its quote closes: such a
#   record is one row (RFC 4180), quarantined or kept as a whole. Empty lines between records are no rows.
# - A rejected record whose quote does not close properly, with later lines taken into it, is cut to its
#   first line, quarantined as `malformed:unclosed_quote`, and the file is read again without that line,
#   so the lines after it are rows of their own (at most MAX_UNCLOSED_QUOTES such lines in one file).
# - A line longer than MAX_LINE_BYTES is quarantined as `malformed:line_size_over_maximum`, whether DuckDB
#   rejected it or dropped it.
# - Where the records still do not cover the file's lines, the file is refused with a PrepError naming it:
#   a file is never read as shorter than it is.
#
# So rows_in = rows_ok + rows_quarantined counts the file's records, and those are its lines but for
# empty lines and the extra lines of quoted line breaks. `_prep_line` is a record's first line in the
# file (the header is line 1), found from DuckDB's byte offset, not from its record count.

#: The longest line (record) DuckDB reads, in bytes without the line break: its max_line_size, set explicitly.
MAX_LINE_BYTES = 2_000_000
#: Lines of one file that may open a quoted field that never closes; with more, the file is refused.
MAX_UNCLOSED_QUOTES = 20
UNCLOSED_QUOTE = "malformed:unclosed_quote"
LINE_TOO_LONG = "malformed:line_size_over_maximum"
_RAW_BYTES = 10_000  # DuckDB keeps this much of a rejected record's text; prep keeps as much of the lines it finds
_WINDOW = MAX_LINE_BYTES // 2  # a line over MAX_LINE_BYTES holds a whole window of this many bytes with no break
_SCAN_BYTES = 8 * _WINDOW
_LINE_BREAKS = re.compile(r"\n(?:\r?\n)*")  # one line break, and the empty lines right after it
_TIME_TEXT = RESERVED_PREFIX + "time"  # a malformed record's time value as text, for the window


@dataclass
class _BadRecord:
    """A CSV record quarantined as malformed."""

    pos: int  # its first byte, or a line break just before it (DuckDB's offsets may point there)
    reason: str
    raw: str
    lines: int | None  # the non-empty lines it covers; None when DuckDB kept only the start of its text
    cut: bool = False  # its quote never closes and it took later lines: cut it to its first line, read on
    start: int | None = None  # its first byte, once known
    line: int | None = None  # its first line in the file (1: the header), once known


def _bad_records(con: duckdb.DuckDBPyConnection, rejects: str, scans: str) -> dict[str, list[_BadRecord]]:
    """DuckDB's rejected records of one scan, per file, in file order: one record per line byte offset."""
    rows = con.execute(f"""
        SELECT s.file_path, e.line_byte_position - 1, arg_min(e.error_type, coalesce(e.column_idx, -1)),
               bool_or(e.error_type = 'UNQUOTED VALUE'), first(e.csv_line), max(strlen(e.csv_line))
        FROM {rejects} e JOIN {scans} s USING (scan_id, file_id)
        GROUP BY s.file_path, e.line_byte_position ORDER BY 1, 2""").fetchall()
    found: dict[str, list[_BadRecord]] = {}
    for path, pos, error, unquoted, raw, size in rows:
        text = (raw or "").strip("\r\n")
        whole = (size or 0) < _RAW_BYTES - 4  # DuckDB cuts the text at 10,000 bytes (on a character boundary)
        unclosed = unquoted and (not whole or "\n" in text or text.count('"') % 2 == 1)
        reason = UNCLOSED_QUOTE if unclosed else "malformed:" + (error or "unreadable").lower().replace(" ", "_")
        lines = 1 + len(_LINE_BREAKS.findall(text)) if whole else None
        found.setdefault(path, []).append(
            _BadRecord(pos=max(int(pos), 0), reason=reason, raw=text, lines=lines, cut=unclosed and lines != 1))
    return found


def _read_up_to(handle, size: int) -> bytes:
    """`size` bytes, fewer only at the end of the file."""
    parts, left = [], size
    while left > 0:
        part = handle.read(left)
        if not part:
            break
        parts.append(part)
        left -= len(part)
    return b"".join(parts)


def _decoded(data: bytes) -> str:
    return data[:_RAW_BYTES].decode("utf-8", errors="replace")


@dataclass
class _Lines:
    """What `_scan_lines` found in one CSV file."""

    lines: int  # lines after the header, empty ones included; a last line without a line break counts
    long: list[tuple[int, int]]  # (first byte, line) of each line over MAX_LINE_BYTES
    starts: dict[int, tuple[int, int]]  # a position asked for -> (first byte of the record there, its line)
    empty: int | None  # empty lines after the header (only when asked for)


def _scan_lines(fs: fsspec.AbstractFileSystem, path: str, compression: str, positions: Iterable[int],
                count_empty: bool = False) -> _Lines:
    """Count a CSV file's lines (line breaks, read 8 MB at a time, nothing parsed), find its lines over
    MAX_LINE_BYTES, and the first byte and line of the record at each of `positions` (skipping the line
    breaks at a position, since DuckDB's offsets may point at the line break before a record)."""
    targets, next_target = sorted(set(positions)), 0
    waiting: list[int] = []  # positions whose record starts in a later block
    starts: dict[int, tuple[int, int]] = {}
    long: list[tuple[int, int]] = []
    newlines = offset = line_start = empty = 0  # line_start: first byte of the line running into the block
    before = b"xx"  # the two bytes before the block

    def note_if_long(start: int, end: int, line: int, block: bytes, block_offset: int) -> None:
        size = end - start
        if size > MAX_LINE_BYTES and block_offset <= end - 1 < block_offset + len(block) \
                and block[end - 1 - block_offset] == 13:
            size -= 1  # DuckDB measures a line without its CR LF
        if size > MAX_LINE_BYTES:
            long.append((start, line))

    with _open_csv(fs, path, compression) as handle:
        while block := _read_up_to(handle, _SCAN_BYTES):
            size = len(block)
            breaks = np.frombuffer(block, np.uint8) == 10
            while next_target < len(targets) and targets[next_target] < offset + size:
                waiting.append(targets[next_target])
                next_target += 1
            resolved, still = [], []
            for pos in waiting:
                at = max(pos, offset) - offset
                while at < size and block[at] in (10, 13):
                    at += 1
                (resolved if at < size else still).append((pos, at))
            waiting = [pos for pos, _ in still]
            if len(resolved) > 16:
                before_each = np.searchsorted(np.flatnonzero(breaks), [at for _, at in resolved])
            else:
                before_each = [block.count(b"\n", 0, at) for _, at in resolved]
            for (pos, at), count in zip(resolved, before_each):
                starts[pos] = (offset + at, newlines + int(count) + 1)

            first = block.find(b"\n")
            if first >= 0:  # the line running into this block ends here
                note_if_long(line_start, offset + first, newlines + 1, block, offset)
                last = block.rfind(b"\n")
                window = first + 1
                while window < last:  # lines wholly in the block: one over the limit holds a window with no break
                    if block.find(b"\n", window, min(window + _WINDOW, last)) >= 0:
                        window += _WINDOW
                        continue
                    start = block.rfind(b"\n", 0, window) + 1
                    end = block.find(b"\n", window)
                    note_if_long(offset + start, offset + end, newlines + block.count(b"\n", 0, start) + 1,
                                 block, offset)
                    window = end + 1
                line_start = offset + last + 1
            if count_empty:  # a line break right after another (or after CR LF) ends an empty line
                whole = np.frombuffer(before + block, np.uint8)
                nl, cr = whole == 10, whole == 13
                empty += int(np.count_nonzero(nl[2:] & (nl[1:-1] | (cr[1:-1] & nl[:-2]))))
            newlines += int(np.count_nonzero(breaks))
            before = (before + block[-2:])[-2:]
            offset += size
    for pos in waiting:
        starts[pos] = (offset, newlines + 1)
    trailing = offset - line_start  # the last line, when the file does not end with a line break
    if trailing and newlines:
        note_if_long(line_start, offset, newlines + 1, b"", offset)
    last_line = 1 if trailing and before[-trailing:] != b"\r" else 0
    return _Lines(lines=max(newlines + last_line - 1, 0), long=long, starts=starts,
                  empty=empty if count_empty else None)


def _record_extent(fs: fsspec.AbstractFileSystem, path: str, compression: str, start: int) -> tuple[int, int]:
    """(non-empty lines, end offset) of the RFC 4180 record at `start`: it ends at the first line break outside
    quotes (a doubled quote inside a quoted field toggles twice, so counting quotes is enough)."""
    lines, inside, read, size, first = 0, False, 0, 0, None  # size, first: the current line's length, first byte

    def non_empty() -> bool:
        return size > 1 or (size == 1 and first != 13)

    with _open_csv(fs, path, compression) as handle:
        handle.seek(start)
        while block := _read_up_to(handle, _SCAN_BYTES):
            at = 0
            while True:
                end = block.find(b"\n", at)
                stop = len(block) if end < 0 else end
                inside ^= block.count(b'"', at, stop) % 2 == 1
                if stop > at and first is None:
                    first = block[at]
                size += stop - at
                if end < 0:
                    break
                lines += non_empty()
                size, first, at = 0, None, end + 1
                if not inside:
                    return lines, start + read + at
            read += len(block)
    return lines + non_empty(), start + read


class _Input:
    """One input's files read into the temporary table or view `_source` (input columns plus FILE_COLUMN,
    and a column per partition folder the files lack) and its malformed CSV records into `_prep_rejected`
    (see "CSV: every line of a file is a row" above)."""

    def __init__(self, con: duckdb.DuckDBPyConnection, source: Location, files: list[str], fmt: str,
                 scratch: str | None = None):
        self.con, self.source, self.files, self.fmt = con, source, files, fmt
        self.scratch = scratch or tempfile.gettempdir()
        self.csv_format: dict[str, tuple[str, tuple[str, ...], str]] = {}  # path -> (delimiter, names, compression)
        if fmt == "csv":
            groups: dict[tuple[str, tuple[str, ...], str], list[str]] = {}
            for path in files:
                self.csv_format[path] = _csv_header(source.fs, path)
                groups.setdefault(self.csv_format[path], []).append(path)
            self.reads = [self._csv_sql(paths, delimiter, names, str(i), compression)
                          for i, ((delimiter, names, compression), paths) in enumerate(sorted(groups.items()))]
            self.file_columns = list(dict.fromkeys(name for _, names, _ in groups for name in names))
        else:
            # Parquet writers leave NaN out of min/max statistics; without can_have_nan DuckDB trusts them
            # and drops NaN rows from filters such as isnan(x) (duckdb/duckdb#25521).
            self.reads = [f"SELECT * FROM read_parquet({_path_list(files)}, union_by_name = true, "
                          f"hive_partitioning = false, can_have_nan = true, filename = {_literal(FILE_COLUMN)})"]
            described = con.execute(f"DESCRIBE {self.reads[0]}").fetchall()
            self.file_columns = [name for name, *_ in described if name != FILE_COLUMN]
        file_names = {name.lower() for name in self.file_columns}
        keys = _partition_keys(files)
        self.partition_columns = [key for key in keys if key.lower() not in file_names]
        self.partitions_in_files = [key for key in keys if key.lower() in file_names]
        self.columns = self.file_columns + self.partition_columns
        self._rereads = 0

    @staticmethod
    def _csv_sql(paths: list[str], delimiter: str, names: tuple[str, ...], rejects: str, compression: str) -> str:
        columns = "{" + ", ".join(f"{_literal(name)}: 'VARCHAR'" for name in names) + "}"
        return (f"SELECT * FROM read_csv({_path_list(paths)}, header = true, auto_detect = false, "
                f"columns = {columns}, delim = {_literal(delimiter)}, quote = '\"', escape = '\"', "
                f"strict_mode = true, max_line_size = {MAX_LINE_BYTES}, compression = {_literal(compression)}, "
                f"store_rejects = true, rejects_table = '_prep_rejects_{rejects}', "
                f"rejects_scan = '_prep_scans_{rejects}', hive_partitioning = false, "
                f"filename = {_literal(FILE_COLUMN)})")

    def check_names(self) -> None:
        reserved = [name for name in self.columns if is_reserved(name)]
        if reserved:
            raise PrepError(f"input {self.source.uri}: column(s) {reserved} start with {RESERVED_PREFIX!r}, which "
                            "prep reserves for the columns it adds (reason, file, line); rename them in the input")

    def _added(self) -> str:
        return "".join(f", {_folder_value(key)} AS {_ident(key)}" for key in self.partition_columns)

    def load(self, schema: InputSchema) -> None:
        """Create `_source` and `_prep_rejected`; refuse files whose own column disagrees with its folder, and
        CSV files whose lines the records read do not account for."""
        union = "\nUNION ALL BY NAME\n".join(self.reads)
        # A local Parquet scan is cheap enough to repeat; CSV parsing and remote reads are done once.
        kind = "TEMP TABLE" if self.fmt == "csv" or self.source.remote else "TEMP VIEW"
        self.con.execute(f"CREATE {kind} _source AS SELECT *{self._added()} FROM ({union})")
        self.con.execute(f"CREATE TEMP TABLE _prep_rejected ({FILE_COLUMN} VARCHAR, {LINE_COLUMN} BIGINT, "
                         f"{REASON_COLUMN} VARCHAR, {RAW_COLUMN} VARCHAR, {_TIME_TEXT} VARCHAR)")
        if self.fmt == "csv":
            bad: dict[str, list[_BadRecord]] = {}
            for group in range(len(self.reads)):
                bad.update(_bad_records(self.con, f"_prep_rejects_{group}", f"_prep_scans_{group}"))
            for path, records in list(bad.items()):
                if any(record.cut for record in records):
                    bad[path] = self._without_unclosed_quotes(path, records)
            self._account_for_lines(bad)
            self._store_rejected(schema, bad)
        for key in self.partitions_in_files:
            self._check_folder_agrees(schema, key)

    def _without_unclosed_quotes(self, path: str, records: list[_BadRecord]) -> list[_BadRecord]:
        """Read `path` again without each line that opens a quoted field that never closes (found one at a time:
        each cut may show the next), replace its rows in `_source`, and return its malformed records."""
        delimiter, names, compression = self.csv_format[path]
        copy = os.path.join(self.scratch, f"unclosed-{self._rereads}.csv")
        with _open_csv(self.source.fs, path, compression) as original, open(copy, "wb") as out:
            shutil.copyfileobj(original, out, _SCAN_BYTES)
        cuts: list[tuple[int, int]] = []  # byte ranges of `path` left out of the copy, in file order
        cut_records: list[_BadRecord] = []

        def in_file(pos: int) -> int:  # a byte offset in the copy -> the same byte's offset in `path`
            for start, end in cuts:
                if start <= pos:
                    pos += end - start
            return pos

        while (record := next((record for record in records if record.cut), None)) is not None:
            if len(cut_records) == MAX_UNCLOSED_QUOTES:
                found = _scan_lines(self.source.fs, path, compression, [cut.start for cut in cut_records]).starts
                lines = ", ".join(str(found[cut.start][1]) for cut in cut_records)
                raise PrepError(
                    f"{path}: more than {MAX_UNCLOSED_QUOTES} lines open a quoted field that never closes (lines "
                    f"{lines}, ...); every line after such a quote would be read into it. Close each quote, and "
                    "write a quote inside a quoted field twice (\"\")")
            first, cut_from, cut_to, text = self._unclosed_line(copy, record.pos)
            start = in_file(first)
            cut_records.append(_BadRecord(pos=start, reason=UNCLOSED_QUOTE, raw=text, lines=1, start=start))
            cuts.append((in_file(cut_from), in_file(cut_from) + cut_to - cut_from))
            cuts.sort()
            _drop_bytes(copy, cut_from, cut_to)
            name = f"u{self._rereads}"
            self._rereads += 1
            self.con.execute(f"CREATE OR REPLACE TEMP TABLE _prep_reread AS "
                             f"{self._csv_sql([copy], delimiter, names, name, 'none')}")
            records = next(iter(_bad_records(self.con, f"_prep_rejects_{name}", f"_prep_scans_{name}").values()), [])
        for record in records:
            record.pos = in_file(record.pos)
        self.con.execute(f"DELETE FROM _source WHERE {FILE_COLUMN} = {_literal(path)}")
        self.con.execute(f"INSERT INTO _source BY NAME SELECT *{self._added()} FROM "
                         f"(SELECT * REPLACE ({_literal(path)} AS {FILE_COLUMN}) FROM _prep_reread)")
        self.con.execute("DROP TABLE _prep_reread")
        os.remove(copy)
        return sorted(records + cut_records, key=lambda record: record.pos)

    @staticmethod
    def _unclosed_line(copy: str, pos: int) -> tuple[int, int, int, str]:
        """(first byte, cut from, cut to, text) of the line at `pos` of a local file: the cut is the line break
        before the line and the line, not its own line break, so the lines around it stay apart."""
        with open(copy, "rb") as handle:
            handle.seek(pos)
            first = pos
            while handle.read(1) in (b"\n", b"\r"):
                first += 1
            handle.seek(max(first - 2, 0))
            before = handle.read(first - max(first - 2, 0))
            cut_from = first - (2 if before.endswith(b"\r\n") else 1 if before.endswith(b"\n") else 0)
            handle.seek(first)
            text, end, offset = b"", None, first
            while end is None:
                block = handle.read(_SCAN_BYTES)
                if not block:
                    end = offset
                    break
                text += block[:max(_RAW_BYTES - len(text), 0)]
                found = block.find(b"\n")
                if found >= 0:
                    end = offset + found
                offset += len(block)
            if end > first:
                handle.seek(end - 1)
                end -= handle.read(1) == b"\r"
        return first, cut_from, end, _decoded(text.split(b"\n", 1)[0].rstrip(b"\r"))

    def _account_for_lines(self, bad: dict[str, list[_BadRecord]]) -> None:
        """Check that each CSV file's records cover its lines (see "CSV: every line of a file is a row"); give
        each malformed record its first byte and line; add the lines over MAX_LINE_BYTES that DuckDB dropped."""
        read = dict(self.con.execute(f"SELECT {FILE_COLUMN}, count(*) FROM _source GROUP BY ALL").fetchall())
        unknown = sorted((set(bad) | set(read)) - set(self.files))
        if unknown:  # the accounting below is per file: a file named otherwise would escape it
            raise RuntimeError(f"the CSV reader named file(s) {unknown[:3]} that are not among the input's files")
        for path in self.files:
            _, _, compression = self.csv_format[path]
            records = bad.setdefault(path, [])
            scan = _scan_lines(self.source.fs, path, compression, [record.pos for record in records])
            for record in records:
                record.start, record.line = scan.starts[record.pos]
            starts = {record.start for record in records}
            dropped = [(start, line) for start, line in scan.long if start not in starts]
            if dropped:  # not a line of a record DuckDB rejected for its length: it dropped that line
                for record in records:
                    if record.lines is None and record.start is not None:
                        record.lines, end = _record_extent(self.source.fs, path, compression, record.start)
                        dropped = [(start, line) for start, line in dropped if not record.start <= start < end]
            for start, line in dropped:
                records.append(_BadRecord(pos=start, reason=LINE_TOO_LONG, raw=self._text_at(path, start),
                                          lines=1, start=start, line=line))
            records.sort(key=lambda record: record.start)
            if scan.lines == read.get(path, 0) + len(records):
                continue  # one line per record: nothing lost (the common case, and the cheap one)
            self._check_spans(path, compression, records, read.get(path, 0))

    def _check_spans(self, path: str, compression: str, records: list[_BadRecord], read: int) -> None:
        """The slow check, for a file with empty lines, quoted line breaks or lost lines: count the lines each
        record covers and refuse the file unless they add up to its non-empty lines."""
        scan = _scan_lines(self.source.fs, path, compression, [], count_empty=True)
        lines = scan.lines - scan.empty
        columns = [_ident(name) for name in self.file_columns]
        pattern = _literal(_LINE_BREAKS.pattern)
        breaks = " + ".join(f"coalesce(len(regexp_extract_all({column}, {pattern})), 0)" for column in columns)
        with_breaks = " OR ".join(f"contains({column}, chr(10))" for column in columns)
        extra = self.con.execute(f"SELECT coalesce(sum({breaks}), 0) FROM _source "
                                 f"WHERE {FILE_COLUMN} = {_literal(path)} AND ({with_breaks})").fetchall()[0][0]
        covered = read + int(extra)  # a row covers one line, and one more per line break in its values
        for record in records:
            if record.lines is None:
                record.lines, _ = _record_extent(self.source.fs, path, compression, record.start)
            covered += record.lines
        if covered != lines:
            first = f"; its first quarantined line is line {records[0].line}" if records else ""
            raise PrepError(
                f"{path}: the CSV reader accounted for {covered} of the file's {lines} lines (not counting the header "
                f"and empty lines) with {read + len(records)} records{first}. Rather than read the file short, prep "
                f"refuses it: look for a quote that never closes or a line over {MAX_LINE_BYTES:,} bytes, fix it "
                "and run again")

    def _text_at(self, path: str, start: int) -> str:
        _, _, compression = self.csv_format[path]
        with _open_csv(self.source.fs, path, compression) as handle:
            handle.seek(start)
            return _decoded(handle.read(_RAW_BYTES).split(b"\n", 1)[0].rstrip(b"\r"))

    def _store_rejected(self, schema: InputSchema, bad: dict[str, list[_BadRecord]]) -> None:
        """Write the malformed records to `_prep_rejected`, with their time value read from their text where the
        field at the time column's place parses as CSV (for the window; see `scope_rejected`)."""
        rows: dict[str, list] = {FILE_COLUMN: [], LINE_COLUMN: [], REASON_COLUMN: [], RAW_COLUMN: [], _TIME_TEXT: []}
        for path, records in bad.items():
            delimiter, names, _ = self.csv_format[path]
            index = names.index(schema.time_column) if schema.time_column in names else None
            for record in records:
                rows[FILE_COLUMN].append(path)
                rows[LINE_COLUMN].append(record.line)
                rows[REASON_COLUMN].append(record.reason)
                rows[RAW_COLUMN].append(record.raw)
                rows[_TIME_TEXT].append(_field(record.raw, delimiter, index))
        table = pa.table({name: pa.array(values, pa.int64() if name == LINE_COLUMN else pa.string())
                          for name, values in rows.items()})
        self.con.register("_prep_rejected_rows", table)
        self.con.execute("INSERT INTO _prep_rejected BY NAME SELECT * FROM _prep_rejected_rows")
        self.con.unregister("_prep_rejected_rows")

    def scope_rejected(self, schema: InputSchema, window: tuple[str, str] | None) -> None:
        """The view `_prep_rejected_scoped`: the malformed records of this run. A record is in the window when
        the time value read from its text (or its file's folder) is; like any row, it also is when that value
        is missing or unreadable, so a line no one can date is quarantined in every window rather than lost."""
        where = "TRUE"
        time_column = schema.time_column
        if window is not None and time_column:
            text = [time_column] if schema.column(time_column).dtype != "string" else []
            where = SchemaSql(schema, DUCKDB, text).in_scope(window)
            value = (f"coalesce({_TIME_TEXT}, {_folder_value(time_column)})" if time_column in self.partition_columns
                     else _TIME_TEXT)
            source = f"(SELECT *, {value} AS {_ident(time_column)} FROM _prep_rejected)"
        else:
            source = "_prep_rejected"
        self.con.execute(f"CREATE OR REPLACE TEMP VIEW _prep_rejected_scoped AS SELECT {FILE_COLUMN}, "
                         f"{LINE_COLUMN}, {REASON_COLUMN}, {RAW_COLUMN} FROM {source} WHERE {where}")

    def _check_folder_agrees(self, schema: InputSchema, key: str) -> None:
        column = next(name for name in self.file_columns if name.lower() == key.lower())
        dtype = schema.column(column).dtype if column in schema.names else "string"
        def typed(expr: str) -> str:
            return (DUCKDB.text.format(expr=expr) if dtype == "string"
                    else DUCKDB.try_cast.format(expr=expr, type=DUCKDB.types[dtype]))
        folder = _folder_value(key)
        row = self.con.execute(f"""
            SELECT {FILE_COLUMN}, {folder}, CAST({_ident(column)} AS VARCHAR), count(*) OVER ()
            FROM _source WHERE {typed(folder)} IS DISTINCT FROM {typed(_ident(column))} LIMIT 1""").fetchone()
        if row:
            path, folder_value, file_value, count = row
            raise PrepError(
                f"{path}: column {column!r} holds {file_value!r} but the file sits in folder {key}={folder_value} "
                f"({count} such row(s) in the input); prep reads the files' own {column!r} values, so move each "
                f"file to the folder of its values, or drop the {key}= folders or the column from the files")

    def rejected_by_reason(self) -> dict[str, int]:
        """The malformed records of this run (`scope_rejected`) by reason."""
        return dict(self.con.execute(
            f"SELECT {REASON_COLUMN}, count(*) FROM _prep_rejected_scoped GROUP BY {REASON_COLUMN}").fetchall())


def _drop_bytes(path: str, start: int, end: int) -> None:
    """Remove bytes [start, end) from a local file, rewriting it."""
    with open(path, "rb") as source, open(path + ".new", "wb") as target:
        left = start
        while left and (block := source.read(min(left, _SCAN_BYTES))):
            target.write(block)
            left -= len(block)
        source.seek(end)
        shutil.copyfileobj(source, target, _SCAN_BYTES)
    os.replace(path + ".new", path)


def _field(text: str, delimiter: str, index: int | None) -> str | None:
    """Field `index` of the first CSV record in `text` (None when there is none or it cannot be read)."""
    if index is None:
        return None
    try:
        record = next(csv.reader(io.StringIO(text), delimiter=delimiter, quotechar='"', doublequote=True), [])
    except csv.Error:
        return None
    return record[index] if index < len(record) else None


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
    counts = ", ".join(f"count({_ident(n)}), count({sql.parsed(n)})" for n in names)
    row = con.execute(f"SELECT {counts} FROM {relation}").fetchone()
    return [(name, sql.schema.column(name).dtype, f"VARCHAR with no parseable {sql.schema.column(name).dtype} value")
            for i, name in enumerate(names) if row[2 * i] > 0 and row[2 * i + 1] == 0]


def _in_schema_order(schema: InputSchema, mistyped: list[tuple[str, str, str]]) -> list[tuple[str, str, str]]:
    return sorted(mistyped, key=lambda problem: schema.names.index(problem[0]))


# --- prepare -----------------------------------------------------------------------------------------

def prepare(input_uri: str, schema: InputSchema, out_uri: str, bucket_count: int,
            window: tuple[str, str] | None = None, storage_options: dict | None = None,
            max_quarantined_share: float = DEFAULT_MAX_QUARANTINED_SHARE,
            allowed_prefixes: Sequence[str] | None = None, rows_per_batch: int | None = None,
            reuse_root: str | None = None) -> PrepResult:
    """Validate, quarantine and bucket `input_uri` into batches under `out_uri` (see the module doc).

    `window` is [start, end) in ISO dates (or date-times) on `schema.time_column`. `storage_options`
    are `s3fs.S3FileSystem` arguments for s3:// URIs. `allowed_prefixes` (None: anywhere) limits the
    input and every file under it (see `check_input_uri`). Raises SchemaError, naming every missing
    or mistyped column, before anything is written, and PrepError when more than
    `max_quarantined_share` of the rows are quarantined or the window holds no usable row (the
    quarantine is written, batches and manifest are not). Replaces batches, manifest and quarantine
    left under `out_uri` by an earlier run. With `rows_per_batch`, the good rows go into fewer than
    `bucket_count` buckets when they are few (`buckets_for`). With `reuse_root` (a folder holding
    `out_uri`, e.g. DATA_ROOT), a prepare of the same fingerprint into another folder under it is
    copied (hard links where the filesystem allows) instead of computed again; the copy is this
    run's own, with its own manifest and marker.
    """
    buckets_for(0, bucket_count, rows_per_batch)
    _check_schema_shape(schema)
    _check_share(max_quarantined_share)
    if window is not None:
        _window_literals(schema, window)
    if allowed_prefixes is not None:
        check_input_uri(input_uri, allowed_prefixes)
    source = Location.parse(input_uri, storage_options)
    out = Location.parse(out_uri, storage_options)
    files, fmt = _resolve_input(source, allowed_prefixes)
    fingerprint = _fingerprint(source, files, schema, window, bucket_count, rows_per_batch, max_quarantined_share)
    earlier = _prepared_before(out, fingerprint)
    if earlier is not None:
        log.info("prep: input and settings unchanged since %s was prepared: reused as it is", out.uri)
        return earlier[0]
    index = _PrepIndex(reuse_root, out) if reuse_root else None
    if index is not None:
        try:
            copied = index.copy_into(out, fingerprint)
        except (OSError, ValueError) as error:  # e.g. the earlier run's folder removed while copying
            log.warning("prep: could not copy the earlier prepare (%s: %s); preparing from the input",
                        type(error).__name__, error)
            copied = None
        if copied is not None:
            return copied
    with tempfile.TemporaryDirectory(prefix="prep-") as scratch, closing(duckdb.connect()) as con:
        con.execute(f"SET temp_directory = {_literal(os.path.join(scratch, 'duckdb'))}")
        if source.remote:
            con.register_filesystem(source.fs)
        data = _Input(con, source, files, fmt, scratch)
        data.check_names()
        data.load(schema)
        types = dict(con.execute("SELECT column_name, column_type FROM (DESCRIBE _source)").fetchall())
        types.pop(FILE_COLUMN, None)
        missing, mistyped, text_columns = _check_types(schema, types)
        sql = SchemaSql(schema, DUCKDB, text_columns)
        mistyped = _in_schema_order(schema, mistyped + _unparseable_columns(con, sql, "_source"))
        if missing or mistyped:
            raise SchemaError(missing, mistyped, {name: near_matches(name, types) for name in missing}, source.uri)
        scope = sql.in_scope(window)
        data.scope_rejected(schema, window)

        by_reason = dict(con.execute(
            f"SELECT reason, count(*) FROM (SELECT {sql.reason()} AS reason FROM _source WHERE {scope}) GROUP BY reason"
        ).fetchall())
        rows_ok = by_reason.pop(None, 0)
        by_reason.update(data.rejected_by_reason())
        rows_in = rows_ok + sum(by_reason.values())
        for reason, count in _stage_duplicates(con, sql, scope).items():
            by_reason[reason] = count
            rows_ok -= count

        staging = out
        if out.remote:
            staging = Location(os.path.join(scratch, "out"), fsspec.filesystem("file"), remote=False)
        _clear_outputs(out)
        os.makedirs(staging.uri, exist_ok=True)
        quarantine_uri = None
        if by_reason:
            _write_quarantine(con, sql, scope, staging.join(QUARANTINE_FILE), data.columns)
            quarantine_uri = out.join(QUARANTINE_FILE)
        try:
            _check_limits(source.uri, schema, window, rows_in, rows_ok, by_reason, max_quarantined_share,
                          quarantine=(con, staging.join(QUARANTINE_FILE), quarantine_uri),
                          time_range=lambda: _time_range(con, sql))
        except PrepError:
            if out.remote and quarantine_uri:
                out.fs.put(staging.join(QUARANTINE_FILE), quarantine_uri)
            raise
        bucket_count = buckets_for(rows_ok, bucket_count, rows_per_batch)
        if rows_ok:
            _write_batches(con, sql, scope, staging.join(BATCHES_DIR), bucket_count)
        manifest = _manifest(con, sql, staging, out, rows_ok)
        con.register("_manifest_frame", manifest)
        con.execute(f"COPY _manifest_frame TO {_literal(staging.join(MANIFEST_FILE))} (FORMAT parquet)")
        if out.remote:
            _upload(staging, out)

    if int(manifest["rows"].sum()) != rows_ok:
        raise RuntimeError(f"batches hold {int(manifest['rows'].sum())} rows but {rows_ok} rows passed the checks")
    result = PrepResult(
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
    out.write_json(out.join(PREPARED_FILE), {"fingerprint": fingerprint, "result": result.to_dict()})
    if index is not None:
        index.record(fingerprint, out)
    return result


# --- Reuse of an earlier prepare into the same place ---------------------------------------------------

#: Prep's own code: a change to any of these files changes every fingerprint.
_PREP_CODE = (__file__, sys.modules[InputSchema.__module__].__file__)


def _fingerprint(source: Location, files: Sequence[str], schema: InputSchema, window: tuple[str, str] | None,
                 bucket_count: int, rows_per_batch: int | None, max_quarantined_share: float) -> str:
    """What decides a prepare's output: each input file's identity and version, and every setting."""
    if source.remote:
        listed = [(path, info.get("size"), info.get("ETag") or info.get("etag"), str(info.get("LastModified")))
                  for path, info in ((path, source.fs.info(path)) for path in files)]
    else:
        listed = [(path, stat.st_size, stat.st_mtime_ns, stat.st_ino, stat.st_dev)
                  for path, stat in ((path, os.stat(path)) for path in files)]
    code = hashlib.sha256()
    for path in _PREP_CODE:
        with open(path, "rb") as handle:
            code.update(handle.read())
    described = {"files": listed, "schema": repr(schema), "window": list(window) if window else None,
                 "bucket_count": bucket_count, "rows_per_batch": rows_per_batch,
                 "max_quarantined_share": max_quarantined_share, "code": code.hexdigest(),
                 "engine": "duckdb-" + duckdb.__version__}
    return hashlib.sha256(json.dumps(described, sort_keys=True, default=str).encode()).hexdigest()


class _PrepIndex:
    """`<root>/prep-index/<fingerprint>.json`: where under `root` a fingerprint was last prepared.

    An entry holds a path relative to `root`, read back only if it stays under `root`, so an entry
    cannot make prep copy from elsewhere.
    """

    FOLDER = "prep-index"

    def __init__(self, root: str, out: Location):
        self.root = Location(root.rstrip("/") if out.remote else os.path.abspath(root), out.fs, out.remote)

    def _entry(self, fingerprint: str) -> str:
        return self.root.join(self.FOLDER, f"{fingerprint}.json")

    def _relative(self, uri: str) -> str | None:
        prefix = self.root.uri.rstrip("/") + "/"
        relative = uri.removeprefix(prefix) if uri.startswith(prefix) else None
        if not relative or os.path.isabs(relative) or os.path.normpath(relative).split(os.sep)[0] == "..":
            return None
        return relative

    def record(self, fingerprint: str, out: Location) -> None:
        relative = self._relative(out.uri)
        if relative is not None:
            self.root.write_json(self._entry(fingerprint), {"out": relative})

    def copy_into(self, out: Location, fingerprint: str) -> PrepResult | None:
        """The earlier prepare of `fingerprint`, copied into `out`; None when there is none intact."""
        entry = self.root.read_many([self._entry(fingerprint)]).get(self._entry(fingerprint))
        try:
            relative = json.loads(entry)["out"] if entry else None
        except (ValueError, KeyError, TypeError):
            relative = None
        if not isinstance(relative, str) or self._relative(self.root.join(relative)) != relative:
            return None
        source = Location(self.root.join(relative), out.fs, out.remote)
        if source.uri == out.uri:
            return None
        found = _prepared_before(source, fingerprint)
        if found is None:
            return None
        earlier, manifest = found
        if not manifest["uri"].str.startswith(source.join("")).all():
            return None
        _clear_outputs(out)
        moved = {uri: out.uri + uri[len(source.uri):] for uri in manifest["uri"]}
        if earlier.quarantine_uri:
            moved[earlier.quarantine_uri] = out.join(QUARANTINE_FILE)
        for old, new in moved.items():
            _copy_file(out, old, new)
        manifest["uri"] = manifest["uri"].map(moved)
        _write_manifest(out, manifest)
        result = dataclasses.replace(earlier, out_uri=out.uri, manifest_uri=out.join(MANIFEST_FILE),
                                     quarantine_uri=out.join(QUARANTINE_FILE) if earlier.quarantine_uri else None)
        out.write_json(out.join(PREPARED_FILE), {"fingerprint": fingerprint, "result": result.to_dict()})
        log.info("prep: input and settings unchanged since %s was prepared: its batches (%d) copied, not recomputed",
                 source.uri, result.batches)
        return result


def _copy_file(out: Location, source: str, target: str) -> None:
    if out.remote:
        out.fs.copy(source, target)  # server-side on S3
        return
    os.makedirs(os.path.dirname(target), exist_ok=True)
    try:
        os.link(source, target)  # prep outputs are never written in place, so sharing the inode is safe
    except OSError:
        shutil.copyfile(source, target)


def _prepared_before(out: Location, fingerprint: str) -> tuple[PrepResult, pd.DataFrame] | None:
    """The result and manifest of an earlier prepare into `out` of the same fingerprint, when all it wrote is
    in place."""
    marker = out.read_many([out.join(PREPARED_FILE)]).get(out.join(PREPARED_FILE))
    if marker is None:
        return None
    try:
        recorded = json.loads(marker)
        if recorded["fingerprint"] != fingerprint:
            return None
        result = PrepResult(**recorded["result"])
    except (ValueError, KeyError, TypeError):
        return None  # an unreadable marker is no reuse: prepare again
    needed = [result.manifest_uri] + ([result.quarantine_uri] if result.quarantine_uri else [])
    if not all(out.fs.exists(path) for path in needed):
        return None
    with out.fs.open(result.manifest_uri, "rb") as handle:
        manifest = pd.read_parquet(handle)
    batches = set(manifest["uri"])
    present = {out.full(path) for path in out.fs.find(out.join(BATCHES_DIR))} if batches else set()
    if len(batches) != result.batches or not batches <= present:
        return None
    return result, manifest


# --- Limits and the errors that explain them ---------------------------------------------------------

_ADVICE = {
    "malformed:invalid_encoding": "the file is not UTF-8: save it as UTF-8 (e.g. iconv -f latin1 -t utf-8)",
    UNCLOSED_QUOTE: "a quote opened on the line never closes: the line is quarantined alone and the lines after it "
                    "are read as rows; close the quote, and write a quote inside a quoted field twice (\"\")",
    LINE_TOO_LONG: f"the line is longer than {MAX_LINE_BYTES:,} bytes: shorten the field, or split the line",
    "malformed:": "the line does not parse as RFC 4180 CSV: give it as many fields as the header and quote "
                  "(\"...\") any field holding the delimiter, a quote (doubled) or a line break",
    **REASON_ADVICE,  # the value reasons, batch-worker try's too
}


def _advice(reason: str) -> str:
    for prefix, text in _ADVICE.items():
        if reason == prefix or (prefix.endswith(":") and reason.startswith(prefix)):
            return text
    return ""


def _reason_lines(by_reason: Mapping[str, int], firsts: Mapping[str, str]) -> str:
    return reason_lines(by_reason, firsts, _advice)


def _first_occurrences(con: duckdb.DuckDBPyConnection, path: str) -> dict[str, str]:
    """Per reason, the first file (and line) of a quarantined row, from the written quarantine."""
    rows = con.execute(f"""
        SELECT {REASON_COLUMN}, first({FILE_COLUMN} ORDER BY {FILE_COLUMN}, {LINE_COLUMN} NULLS LAST),
               first({LINE_COLUMN} ORDER BY {FILE_COLUMN}, {LINE_COLUMN} NULLS LAST)
        FROM read_parquet({_literal(_as_glob_literal(path))}) GROUP BY {REASON_COLUMN}""").fetchall()
    return {reason: f"{file}" + (f" line {line}" if line is not None else "") for reason, file, line in rows}


def _time_range(con: duckdb.DuckDBPyConnection, sql: SchemaSql) -> tuple[str, str, int] | None:
    """(first, last, rows) of the input's parseable time values, all rows, window or not."""
    value = sql.value(sql.schema.time_column)
    first, last, count = con.execute(f"SELECT min({value}), max({value}), count({value}) FROM _source").fetchone()
    return (str(first), str(last), count) if count else None


def _check_limits(input_uri: str, schema: InputSchema, window: tuple[str, str] | None, rows_in: int, rows_ok: int,
                  by_reason: Mapping[str, int], max_quarantined_share: float, *,
                  quarantine: tuple | None = None, time_range=None) -> None:
    """Raise PrepError when the window is empty, too much is quarantined, or nothing in the window is usable."""
    scope = f"in the window [{window[0]}, {window[1]}) of {input_uri}" if window else f"of {input_uri}"
    if window and not rows_in:
        span = time_range() if time_range else None
        found = (f"its {schema.time_column!r} values run from {span[0]} to {span[1]} ({span[2]} rows)" if span
                 else f"it has no row with a valid {schema.time_column!r}")
        raise EmptyWindow(f"no rows {scope}: {found}. Point input_uri at data for this window, or choose a run "
                        "whose data interval (and lookback) falls inside the data's dates")
    quarantined = rows_in - rows_ok
    share = quarantined / rows_in if rows_in else 0.0
    over = share > max_quarantined_share
    if not over and (rows_ok or not window):
        return
    firsts, kept = {}, ""
    if quarantine:
        con, staged, final = quarantine
        firsts = _first_occurrences(con, staged)
        kept = f" The quarantined rows are in {final} with their reason, file and line."
    # batch-worker try refuses a sample with the same words (schema.quarantine_refusal)
    raise PrepError(quarantine_refusal(scope, rows_in, by_reason, firsts, max_quarantined_share, kept, _advice)
                    or f"no usable rows {scope}: all {rows_in} were quarantined:\n{_reason_lines(by_reason, firsts)}"
                       f"\nFix the input.{kept}")


# --- Duplicates, batches, quarantine, manifest ---------------------------------------------------------

def _duplicate_key_hashes(con: duckdb.DuckDBPyConnection, sql: SchemaSql, scope: str) -> np.ndarray:
    """Hashes of unique keys that occur more than once among good rows (plus rare hash collisions).

    Sorting one uint64 per row in numpy is several times faster than a DuckDB GROUP BY with as many
    groups as rows; DuckDB's hash() is fine here since the hashes live only within this connection.
    """
    key = ", ".join(sql.value(name) for name in sql.schema.unique_key)
    hashes = con.execute(f"SELECT hash({key}) AS h FROM _source WHERE {scope} AND {sql.valid()}").fetchnumpy()["h"]
    hashes = np.sort(np.asarray(hashes))
    return np.unique(hashes[1:][hashes[1:] == hashes[:-1]])


def _stage_duplicates(con: duckdb.DuckDBPyConnection, sql: SchemaSql, scope: str) -> dict[str, int]:
    """Rank the good rows whose unique key hash repeats into `_dup_rows`; return the duplicates by reason.

    The batches take every other good row from `_source` and, from `_dup_rows`, the rows ranked 1 of
    keys without conflict (`SchemaSql.duplicate_window`).
    """
    con.execute("CREATE OR REPLACE TEMP TABLE _dup_hashes (h UBIGINT)")
    if not sql.schema.unique_key:
        return {}
    repeated = _duplicate_key_hashes(con, sql, scope)
    if not len(repeated):
        return {}
    con.register("_repeated_hashes", pa.table({"h": pa.array(repeated, pa.uint64())}))
    con.execute("INSERT INTO _dup_hashes SELECT h FROM _repeated_hashes")
    key = ", ".join(sql.value(name) for name in sql.schema.unique_key)
    raw = [_ident(name) for name in _source_columns(con)]
    con.execute(f"""
        CREATE TEMP TABLE _dup_rows AS
        SELECT *, {sql.duplicate_window(raw)}
        FROM _source
        WHERE {scope} AND {sql.valid()} AND hash({key}) IN (SELECT h FROM _dup_hashes)""")
    return dict(con.execute(f"SELECT reason, count(*) FROM (SELECT {sql.duplicate_reason()} AS reason FROM _dup_rows) "
                            "WHERE reason IS NOT NULL GROUP BY reason").fetchall())


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
                 f" UNION ALL {select} FROM _dup_rows WHERE {RANK_COLUMN} = 1 AND NOT {CONFLICT_COLUMN}")
    con.execute(f"COPY ({rows}) TO {_literal(directory)} (FORMAT parquet, PARTITION_BY ({BUCKET_COLUMN}))")


def _write_quarantine(con: duckdb.DuckDBPyConnection, sql: SchemaSql, scope: str, path: str,
                      input_columns: Sequence[str]) -> None:
    parts = [f"SELECT *, {sql.reason()} AS {REASON_COLUMN} FROM _source WHERE {scope} AND NOT ({sql.valid()})"]
    if _has_duplicates(con):
        parts.append(f"SELECT * EXCLUDE ({RANK_COLUMN}, {CONFLICT_COLUMN}), {sql.duplicate_reason()} AS {REASON_COLUMN} "
                     f"FROM _dup_rows WHERE {RANK_COLUMN} > 1 OR {CONFLICT_COLUMN}")
    parts.append("SELECT * FROM _prep_rejected_scoped")
    columns = ", ".join(_ident(name) for name in [*input_columns, REASON_COLUMN, FILE_COLUMN, LINE_COLUMN, RAW_COLUMN])
    union = "\nUNION ALL BY NAME\n".join(f"({part})" for part in parts)
    con.execute(f"COPY (SELECT {columns} FROM ({union})) TO {_literal(path)} (FORMAT parquet)")


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
    files = _literal(_as_glob_literal(staging.join(BATCHES_DIR)) + f"/{BUCKET_COLUMN}=*/*.parquet")
    frame = con.execute(f"""
        SELECT CAST({BUCKET_COLUMN} AS BIGINT) AS batch_id, min({FILE_COLUMN}) AS uri,
               count(DISTINCT {FILE_COLUMN}) AS files, count(*) AS "rows", count(DISTINCT ({unit})) AS units,
               md5(concat_ws('|', {engine}, count(*), sum({ROW_HASH_COLUMN}), bit_xor({ROW_HASH_COLUMN}))) AS content_hash
        FROM (SELECT {BUCKET_COLUMN}, {FILE_COLUMN}, {unit}, hash({columns}) AS {ROW_HASH_COLUMN}
              FROM read_parquet({files}, hive_partitioning = true, hive_types = {{'{BUCKET_COLUMN}': 'BIGINT'}},
                                filename = {_literal(FILE_COLUMN)}))
        GROUP BY {BUCKET_COLUMN} ORDER BY {BUCKET_COLUMN}""").df()
    split = frame[frame["files"] != 1]
    if len(split):
        raise RuntimeError(f"DuckDB wrote several files for bucket(s) {split['batch_id'].tolist()[:10]}")
    prefix = staging.join(BATCHES_DIR)
    frame["uri"] = [out.join(BATCHES_DIR, os.path.relpath(path, prefix).replace(os.sep, "/")) for path in frame["uri"]]
    return frame[list(MANIFEST_COLUMNS)]


def _write_manifest(out: Location, manifest: pd.DataFrame) -> None:
    """`manifest` as `<out>/manifest.parquet`, written atomically (for the paths that build it as a frame)."""
    from batch_worker.runtime import parquet_bytes

    out.write_bytes(out.join(MANIFEST_FILE), parquet_bytes(manifest))


def _clear_outputs(out: Location) -> None:
    """Remove what an earlier prep wrote under `out`, its completion marker and manifest first."""
    for name in (PREPARED_FILE, MANIFEST_FILE, QUARANTINE_FILE):
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
