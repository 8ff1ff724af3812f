"""`prepare`: validate, quarantine and bucket one input with one DuckDB connection.

`prepare` reads CSV or Parquet (a file, a directory, a glob; local or s3://) and writes, under
`out_uri`, the batches, the quarantine, the manifest and `_PREPARED.json` (`outputs.py`). In order:
the input's files are found and checked (`inputs.py`); an earlier prepare of the same fingerprint is
reused or copied (`reuse.py`); the files are read (`reading.py`, `lines.py`) and their columns
checked against the schema (a SchemaError names every problem before anything is written); the rows
of the window are checked and counted by reason (`sql.py`), duplicates ranked, the limits applied
(`quarantine.py`); then the quarantine, the batches and the manifest are written, `_PREPARED.json`
last.

Rows outside the optional `window` on `schema.time_column` are not part of the run; rows whose
time value is missing or unparseable stay in it, to be quarantined. A malformed CSV record is
placed by the time value read from its own text (the field at the time column's place in its
header), by the same rule: one whose date cannot be read is quarantined in every window. Every
step is set-based SQL; only a 64-bit hash per row leaves DuckDB, to look for duplicate keys (see
`_duplicate_key_hashes`).
"""
from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Mapping, Sequence
from contextlib import closing

import duckdb
import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
from batch_worker.schema import DTYPES, RESERVED_PREFIX, InputSchema
from batch_worker.storage import Location

from operators.kit.prep.errors import PrepError, SchemaError, near_matches
from operators.kit.prep.inputs import _as_glob_literal, _resolve_input, check_input_uri
from operators.kit.prep.outputs import (BATCHES_DIR, BUCKET_COLUMN, FILE_COLUMN, LINE_COLUMN, MANIFEST_COLUMNS,
                                        MANIFEST_FILE, PREPARED_FILE, QUARANTINE_FILE, RAW_COLUMN, REASON_COLUMN,
                                        PrepResult, _clear_outputs, _upload)
from operators.kit.prep.quarantine import DEFAULT_MAX_QUARANTINED_SHARE, _check_limits, _check_share, _time_range
from operators.kit.prep.reading import _Input
from operators.kit.prep.reuse import _fingerprint, _prepared_before, _PrepIndex
from operators.kit.prep.sql import (CONFLICT_COLUMN, DUCKDB, RANK_COLUMN, SchemaSql, _check_schema_shape, _ident,
                                    _literal, _window_literals, buckets_for)

log = logging.getLogger(__name__)

ROW_HASH_COLUMN = RESERVED_PREFIX + "row_hash"


def prepare(input_uri: str, schema: InputSchema, out_uri: str, bucket_count: int,
            window: tuple[str, str] | None = None, storage_options: dict | None = None,
            max_quarantined_share: float = DEFAULT_MAX_QUARANTINED_SHARE,
            allowed_prefixes: Sequence[str] | None = None, rows_per_batch: int | None = None,
            reuse_root: str | None = None) -> PrepResult:
    """Validate, quarantine and bucket `input_uri` into batches under `out_uri` (see this module's doc).

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
