"""The Athena path: the same checks, window, duplicate rule and buckets as `prepare`, in an Athena CTAS.

`athena_ctas_sql` builds the same predicates, duplicate rule and bucket expression for Athena (a
CTAS that writes the good rows bucketed by that expression); `run_athena_prep` submits it.
`prepare_athena` runs it with the counts of the rows it leaves out and the manifest, as `prepare`
does with DuckDB.
"""
from __future__ import annotations

import re

import pandas as pd
from batch_worker.schema import InputSchema
from batch_worker.storage import Location

from operators.kit.prep.outputs import (BATCHES_DIR, BUCKET_COLUMN, MANIFEST_COLUMNS, MANIFEST_FILE, REASON_COLUMN,
                                        PrepResult, _write_manifest)
from operators.kit.prep.quarantine import DEFAULT_MAX_QUARANTINED_SHARE, _check_limits, _check_share
from operators.kit.prep.sql import (ATHENA, CONFLICT_COLUMN, RANK_COLUMN, SchemaSql, _check_bucket_count,
                                    _check_schema_shape, _ident, _literal)

_TABLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$")


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
