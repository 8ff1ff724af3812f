"""SQL shared by the DuckDB and the Athena paths: a schema's typed values, bad-row checks, window and bucket.

`SchemaSql` spells them in one `Dialect` (DUCKDB, ATHENA), so both engines keep, quarantine and
bucket the same rows. Its `checks` decide the value reasons of the quarantine (`null:`,
`non_finite:`, `non_numeric:`, `non_date:`, `non_integer:`, `out_of_range:`; see `quarantine.py`),
and its `duplicate_window` decides `duplicate` and `conflicting_duplicate`.

A row's bucket is the first 56 bits of the md5 of its unit key values modulo `bucket_count`
(`bucketing_sql`): the same id in DuckDB and Athena, on every run. String columns of the unit and
unique keys lose leading and trailing blanks (Unicode white space, zero-width spaces and byte order
marks: `batch_worker.schema.BLANK_CODES`) in both dialects.
"""
from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from batch_worker.schema import (BLANK_CODES, DATE_TEXT, INTEGER_TEXT, NUMBER_TEXT, RESERVED_PREFIX, InputSchema,
                                 is_reserved)

from operators.kit.prep.outputs import BUCKET_COLUMN

MAX_BUCKETS = 10_000
#: Hex digits of the unit key's md5 that pick its bucket: 56 bits stay non-negative in Athena's
#: signed BIGINT, so both engines compute the same modulo.
KEY_HEX_DIGITS = 14
RANK_COLUMN = RESERVED_PREFIX + "rank"
CONFLICT_COLUMN = RESERVED_PREFIX + "conflict"
DUPLICATE = "duplicate"
CONFLICTING_DUPLICATE = "conflicting_duplicate"

_KEY_SEPARATOR = "chr(31)"  # ASCII unit separator between key values
_NULL_KEY_MARKER = "chr(30)"  # stands for a NULL key value, which would otherwise vanish from the text
#: Trimmed from both ends of key strings and values' text: the schema's blanks (batch-worker try's too).
_BLANKS = " || ".join(f"chr({code})" for code in BLANK_CODES)
_INFINITY_WORDS = ("inf", "+inf", "-inf", "infinity", "+infinity", "-infinity")
_NAN_WORDS = ("nan", "+nan", "-nan")


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
