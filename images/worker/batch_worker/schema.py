"""The input schema a workload declares; prep validates data against it before any fan-out.

It also holds the one definition of a good value: `Column.read_text` says what a CSV's text in a
column is (its value, or why its row is bad: `null`, `non_finite`, `non_numeric`, `non_integer`,
`non_date`, `out_of_range`), from the patterns `NUMBER_TEXT`, `INTEGER_TEXT` and `DATE_TEXT`, which
Python's `re`, DuckDB's `regexp_full_match` and Athena's `regexp_like` read alike; `describe_value`
says it in words naming the column, the row and unit, and the value; `quarantine_refusal` is the
message when too many rows are bad. `batch-worker try` calls them on its sample; prep's SQL is
their translation (operators/kit/prep/sql.py), so a sample and a run keep and refuse the same rows.
An int column's text must be a whole number ("2", "-3", "2.0"): "0.5" is not a label 0 or 1, and
is never rounded to one.
"""
from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

#: Logical column types a workload may declare, and the DuckDB types that satisfy each.
DTYPES: dict[str, tuple[str, ...]] = {
    "string": ("VARCHAR",),
    "int": ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "UTINYINT", "USMALLINT", "UINTEGER", "UBIGINT", "HUGEINT"),
    "float": ("FLOAT", "DOUBLE", "DECIMAL", "TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT"),
    "date": ("DATE", "TIMESTAMP", "TIMESTAMP WITH TIME ZONE", "TIMESTAMP_NS", "TIMESTAMP_MS", "TIMESTAMP_S"),
}

#: Prefix of the columns prep adds (quarantine reason, file, line, ranks). No schema or input column may
#: use it, compared without case as DuckDB and Athena compare names.
RESERVED_PREFIX = "_prep_"


def is_reserved(name: str) -> bool:
    return name.lower().startswith(RESERVED_PREFIX)


#: Blanks around a value's text that do not count, here and in prep's SQL: Unicode's White_Space (the ASCII
#: blanks, NEL, no-break spaces, the typographic spaces U+2000-U+200A, line and paragraph separators, the
#: ideographic space) and the invisible zero-width space and byte order mark, which spreadsheets and
#: copy-paste leave on values.
BLANK_CODES = (9, 10, 11, 12, 13, 32, 0x85, 0xA0, 0x1680, *range(0x2000, 0x200C), 0x2028, 0x2029, 0x202F, 0x205F,
               0x3000, 0xFEFF)
BLANKS = "".join(map(chr, BLANK_CODES))
#: A number's text: digits with an optional sign, decimal dot and exponent ("3", "-0.5", ".5", "1e-3").
NUMBER_TEXT = r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?"
#: An int column's text: a whole number, optionally with a zero fraction ("2", "-3", "2.0"); not "0.5", not "1e3".
INTEGER_TEXT = r"[+-]?[0-9]+(\.0*)?"
#: A date column's text: YYYY-MM-DD (and a real day of the calendar).
DATE_TEXT = r"[0-9]{4}-[0-9]{2}-[0-9]{2}"
#: Words for "missing" and for infinity in a numeric column, any case.
NAN_WORDS = ("nan", "+nan", "-nan")
INFINITY_WORDS = ("inf", "+inf", "-inf", "infinity", "+infinity", "-infinity")
#: The range of an int column's values (BIGINT).
INT_RANGE = (-(2 ** 63), 2 ** 63 - 1)
#: The share of bad rows above which a run (and a sample) is refused, unless a run says otherwise.
DEFAULT_MAX_QUARANTINED_SHARE = 0.1
#: A bad row's reason kinds in the order they are looked for: a row's reason is the first that applies, all
#: columns' nulls before any column's infinities, and so on (prep's order).
REASON_KINDS = ("null", "non_finite", "non_numeric", "non_integer", "non_date", "out_of_range")
DUPLICATE = "duplicate"
CONFLICTING_DUPLICATE = "conflicting_duplicate"
#: What to do about each reason (a reason is `<kind>:<column>`, or one of the duplicate reasons).
REASON_ADVICE = {
    "null:": "fill the column, or declare it nullable in the workload's schema",
    "non_finite:": "replace infinite values by finite numbers",
    "non_numeric:": "write numbers (a dot for decimals, no units or thousands separators)",
    "non_integer:": "write whole numbers: the column is declared int, and a fraction is never rounded",
    "non_date:": "write dates as YYYY-MM-DD",
    "out_of_range:": "the values lie outside the column's min/max in the workload's schema",
    DUPLICATE: "identical rows share a unique key: one of each is kept; remove the copies",
    CONFLICTING_DUPLICATE: "rows share a unique key but differ: none is kept; keep one row per key",
}
_WHAT = {
    "null": "is empty, and the column may not be",
    "non_finite": "is not a finite number",
    "non_numeric": "is not a number",
    "non_integer": "is not a whole number",
    "non_date": "is not a date (YYYY-MM-DD)",
}


def advice(reason: str) -> str:
    for prefix, text in REASON_ADVICE.items():
        if reason == prefix or (prefix.endswith(":") and reason.startswith(prefix)):
            return text
    return ""


@dataclass(frozen=True)
class Column:
    name: str
    dtype: str  # one of DTYPES
    nullable: bool = False
    min: float | None = None  # inclusive bounds for numeric columns; rows outside are quarantined
    max: float | None = None

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise ValueError(f"column {self.name!r}: unknown dtype {self.dtype!r}; expected one of {sorted(DTYPES)}")
        if is_reserved(self.name):
            raise ValueError(f"column {self.name!r}: names starting with {RESERVED_PREFIX!r} are reserved for "
                             "the columns prep adds; rename the column")

    def read_text(self, text: str | None) -> tuple[Any, str | None]:
        """(value, None) for a CSV text that is a value of this column (a string column's text as it is, a number,
        a date; None where a nullable column is empty); (None, kind) for one that makes its row bad, `kind` one of
        REASON_KINDS. The one definition of a good value: `batch-worker try` calls it, prep's SQL translates it."""
        if self.dtype == "string":
            return (None, None if self.nullable else "null") if text is None else (text, None)
        word = text.strip(BLANKS).lower() if text is not None else ""
        if text is None or word == "" or (self.dtype != "date" and word in NAN_WORDS):
            return None, None if self.nullable else "null"
        if self.dtype == "date":
            try:
                value = dt.date.fromisoformat(word) if re.fullmatch(DATE_TEXT, word) else None
            except ValueError:
                value = None
            return (value, None) if value is not None else (None, "non_date")
        if word in INFINITY_WORDS or not re.fullmatch(NUMBER_TEXT, word):
            return None, "non_finite" if word in INFINITY_WORDS else "non_numeric"
        number = float(word)
        if not math.isfinite(number):
            return None, "non_finite"  # 1e400
        if self.dtype == "int":
            if not re.fullmatch(INTEGER_TEXT, word):
                return None, "non_integer"
            value = int(word.split(".")[0])
            if not INT_RANGE[0] <= value <= INT_RANGE[1]:
                return None, "non_numeric"
            return self._in_range(value)
        return self._in_range(number)

    def check_value(self, value: Any) -> str | None:
        """The reason kind a typed value (a Parquet file's) makes its row bad, or None: null, infinity, range."""
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return None if self.nullable else "null"
        if isinstance(value, float) and math.isinf(value):
            return "non_finite"
        if self.dtype in ("int", "float"):
            return self._in_range(value)[1]
        return None

    def _in_range(self, value: float) -> tuple[Any, str | None]:
        if (self.min is not None and value < self.min) or (self.max is not None and value > self.max):
            return None, "out_of_range"
        return value, None

    def describe_value(self, kind: str, text: Any, where: str) -> str:
        """A bad value in words: where it is (file, row, unit), the column, the value, and what is wrong with it."""
        if kind == "out_of_range":
            bounds = (f"[{'-inf' if self.min is None else f'{self.min:g}'}, "
                      f"{'inf' if self.max is None else f'{self.max:g}'}]")
            what = f"is outside {bounds}, the column's range in the workload's schema"
        else:
            what = _WHAT[kind] + (" (the column is declared int)" if kind == "non_integer" else "")
        return f"{where}: {self.name} = {text!r} {what}"


@dataclass(frozen=True)
class InputSchema:
    """Columns of the input table; `unit_key` groups rows into units of work.

    `unique_key` identifies one row; repeated rows are quarantined as duplicates.
    `time_column` (optional) is the column a run's data interval filters on.
    """

    columns: tuple[Column, ...]
    unit_key: tuple[str, ...]
    unique_key: tuple[str, ...] = ()
    time_column: str | None = None
    extra: dict = field(default_factory=dict)

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(name)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)


def reason_lines(by_reason: Mapping[str, int], firsts: Mapping[str, str],
                 advise: Callable[[str], str] = advice) -> str:
    """One line per reason, most frequent first: the count, where it first occurs and what to do (`advise`: prep
    adds its own reasons, such as a CSV line that does not parse)."""
    return "\n".join(f"  {reason}: {count}" + (f" (first: {firsts[reason]})" if reason in firsts else "")
                     + (f"; {advise(reason)}" if advise(reason) else "")
                     for reason, count in sorted(by_reason.items(), key=lambda item: (-item[1], item[0])))


def quarantine_refusal(scope: str, rows_in: int, by_reason: Mapping[str, int], firsts: Mapping[str, str],
                       max_quarantined_share: float, kept: str = "",
                       advise: Callable[[str], str] = advice) -> str | None:
    """The message refusing an input whose bad rows are more than `max_quarantined_share` of `rows_in`, or that
    keeps none; None when it is not refused. `scope` says which rows ("of FILE", "in the window ... of FILE");
    `kept`, where the bad rows were written."""
    bad = sum(by_reason.values())
    share = bad / rows_in if rows_in else 0.0
    lines = reason_lines(by_reason, firsts, advise)
    if share > max_quarantined_share:
        return (f"{bad} of {rows_in} rows {scope} were quarantined ({share:.1%}), more than "
                f"max_quarantined_share={max_quarantined_share}:\n{lines}\nFix the input, or raise the run parameter "
                f"max_quarantined_share (0..1) if this share of bad rows is expected.{kept}")
    if rows_in and bad == rows_in:
        return f"no usable rows {scope}: all {rows_in} were quarantined:\n{lines}\nFix the input.{kept}"
    return None
