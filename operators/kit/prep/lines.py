"""CSV: every line of a file is a row, read or quarantined.

DuckDB's CSV reader can lose lines without a word: a quote that never closes takes every later line into
one rejected record (of which it keeps the first 10,000 bytes), and a line longer than its read buffer
vanishes. So prep counts each file's lines itself, with a streaming count of line breaks that does not
parse anything, and checks that the records DuckDB read, good and rejected, cover exactly those lines:

- A record is one line, or several when a quoted field holds line breaks and its quote closes: such a
  record is one row (RFC 4180), quarantined or kept as a whole. Empty lines between records are no rows.
- A rejected record whose quote does not close properly, with later lines taken into it, is cut to its
  first line, quarantined as `malformed:unclosed_quote`, and the file is read again without that line,
  so the lines after it are rows of their own (at most MAX_UNCLOSED_QUOTES such lines in one file).
- A line longer than MAX_LINE_BYTES is quarantined as `malformed:line_size_over_maximum`, whether DuckDB
  rejected it or dropped it.
- Where the records still do not cover the file's lines, the file is refused with a PrepError naming it:
  a file is never read as shorter than it is.

So rows_in = rows_ok + rows_quarantined counts the file's records, and those are its lines but for
empty lines and the extra lines of quoted line breaks. `_prep_line` is a record's first line in the
file (the header is line 1), found from DuckDB's byte offset, not from its record count.

`reading.py` applies these rules as it reads each CSV file; this module counts a file's lines and finds
its records in its bytes, apart from the CSV parser.
"""
from __future__ import annotations

import csv
import io
import os
import re
import shutil
from collections.abc import Iterable
from dataclasses import dataclass

import duckdb
import fsspec
import numpy as np

from operators.kit.prep.inputs import _open_csv

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
