"""The input's files read into DuckDB (`_Input`): the table `_source`, and its malformed CSV records.

Names: every column prep adds starts with `_prep_` (`batch_worker.schema.RESERVED_PREFIX`); an
input column with that prefix is refused before anything is computed (schema columns are checked
in `sql.py`). A `key=value` folder above the files gives a column `key` when the files lack one;
when the files carry that column too, their values are used and a value that disagrees with its
folder is an error naming the file.

A CSV file's malformed records are found, cut and counted by the rules of `lines.py` and kept in
`_prep_rejected` with the time value read from their own text, so the window places them like any
row (`scope_rejected`).
"""
from __future__ import annotations

import os
import shutil
import tempfile

import duckdb
import pyarrow as pa
from batch_worker.schema import RESERVED_PREFIX, InputSchema, is_reserved
from batch_worker.storage import Location

from operators.kit.prep.errors import PrepError
from operators.kit.prep.inputs import _csv_header, _folder_value, _open_csv, _partition_keys, _path_list
from operators.kit.prep.lines import (_LINE_BREAKS, _RAW_BYTES, _SCAN_BYTES, LINE_TOO_LONG, MAX_LINE_BYTES,
                                      MAX_UNCLOSED_QUOTES, UNCLOSED_QUOTE, _bad_records, _BadRecord, _decoded,
                                      _drop_bytes, _field, _record_extent, _scan_lines)
from operators.kit.prep.outputs import FILE_COLUMN, LINE_COLUMN, RAW_COLUMN, REASON_COLUMN
from operators.kit.prep.sql import DUCKDB, SchemaSql, _ident, _literal

_TIME_TEXT = RESERVED_PREFIX + "time"  # a malformed record's time value as text, for the window


class _Input:
    """One input's files read into the temporary table or view `_source` (input columns plus FILE_COLUMN,
    and a column per partition folder the files lack) and its malformed CSV records into `_prep_rejected`
    (see `lines.py`)."""

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
        """Check that each CSV file's records cover its lines (see `lines.py`); give
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
