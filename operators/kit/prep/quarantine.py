"""Why a row is quarantined, and when a prepare is refused for what it quarantined.

Every bad row of the run is written to `quarantine.parquet` (`outputs.py`) with its reason, the
first that applies:
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

The value reasons are decided by `sql.py` (`SchemaSql.checks`), the malformed ones by `lines.py` and
`reading.py`, the duplicates by `SchemaSql.duplicate_window` over the rows that passed.

rows_in = rows_ok + rows_quarantined, counting every unparseable CSV record as one row; for CSV, the
records are checked against the files' own line counts (`lines.py`).

Limits: when more than `max_quarantined_share` of the rows (in the window) are quarantined, or a
window holds no usable row, `prepare` writes the quarantine, no batches and no manifest, and
raises `PrepError` with the counts by reason, where each reason first occurs and what to do.
"""
from __future__ import annotations

from collections.abc import Mapping

import duckdb
from batch_worker.schema import REASON_ADVICE, InputSchema, quarantine_refusal, reason_lines

from operators.kit.prep.errors import EmptyWindow, PrepError
from operators.kit.prep.inputs import _as_glob_literal
from operators.kit.prep.lines import LINE_TOO_LONG, MAX_LINE_BYTES, UNCLOSED_QUOTE
from operators.kit.prep.outputs import FILE_COLUMN, LINE_COLUMN, REASON_COLUMN
from operators.kit.prep.sql import SchemaSql, _literal

DEFAULT_MAX_QUARANTINED_SHARE = 0.1


def _check_share(max_quarantined_share: float) -> None:
    if (isinstance(max_quarantined_share, bool) or not isinstance(max_quarantined_share, (int, float))
            or not 0 <= max_quarantined_share <= 1):
        raise ValueError(f"max_quarantined_share must be a number in 0..1, got {max_quarantined_share!r}")


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
