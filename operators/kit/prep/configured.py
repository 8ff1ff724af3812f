"""`prepare_configured`: the entry point for a user-given `input_uri`; it picks the engine and applies the allow-list.

DuckDB's `prepare` reads a path or s3:// URI under DATA_ROOT or a prefix of AIRBATCH_INPUT_PREFIXES
(`inputs.py`); an `athena://database.table` goes to `prepare_athena` (`athena.py`).
"""
from __future__ import annotations

import os
from collections.abc import Mapping

from batch_worker.schema import InputSchema

from operators.kit.prep.athena import _TABLE_NAME, prepare_athena
from operators.kit.prep.duckdb_prepare import prepare
from operators.kit.prep.inputs import input_prefixes
from operators.kit.prep.outputs import PrepResult
from operators.kit.prep.quarantine import DEFAULT_MAX_QUARANTINED_SHARE

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
