"""Prep: validate one input table against a workload's schema, quarantine bad rows, bucket the rest.

`prepare` (DuckDB) and `prepare_athena` write the good rows as batches, one per bucket of unit
keys, the bad rows as a quarantine with their reasons, and the manifest the engine plans from;
`prepare_configured` is the entry point for a user-given `input_uri`. Each module's docstring is
the reference for its concern:

- `duckdb_prepare.py`: `prepare` step by step; duplicates; writing batches, quarantine and manifest
- `outputs.py`: what a prepare writes under `out_uri` (files, columns), `PrepResult`, `read_manifest`
- `quarantine.py`: why a row was quarantined (every reason, its advice) and when a prepare is refused for it
- `sql.py`: the SQL both engines share: dialects, the checks behind each value reason, window, bucket
- `inputs.py`: where input may come from (the allow-list), which files it is, CSV headers and compression
- `lines.py`: every line of a CSV file is a row: unclosed quotes, long lines, line numbers
- `reading.py`: the files read into DuckDB, partition folders, malformed records kept for the quarantine
- `reuse.py`: why a prepare was reused or copied: `_PREPARED.json`, the fingerprint, the prep index
- `athena.py`: the same prep as an Athena CTAS
- `configured.py`: `prepare_configured`, which picks DuckDB or Athena and applies the allow-list
- `errors.py`: `PrepError` and the errors built on it
"""
from __future__ import annotations

from operators.kit.prep.athena import (athena_ctas_sql, athena_manifest_sql, athena_quarantine_sql, prepare_athena,
                                       run_athena_prep)
from operators.kit.prep.configured import ATHENA_SCHEME, prepare_configured
from operators.kit.prep.duckdb_prepare import ROW_HASH_COLUMN, prepare
from operators.kit.prep.errors import EmptyWindow, PrepError, SchemaError, near_matches
from operators.kit.prep.inputs import INPUT_PREFIXES_SETTING, check_input_uri, input_prefixes
from operators.kit.prep.lines import LINE_TOO_LONG, MAX_LINE_BYTES, MAX_UNCLOSED_QUOTES, UNCLOSED_QUOTE
from operators.kit.prep.outputs import (BATCHES_DIR, BUCKET_COLUMN, FILE_COLUMN, LINE_COLUMN, MANIFEST_COLUMNS,
                                        MANIFEST_FILE, PREPARED_FILE, QUARANTINE_FILE, RAW_COLUMN, REASON_COLUMN,
                                        PrepResult, read_manifest)
from operators.kit.prep.quarantine import DEFAULT_MAX_QUARANTINED_SHARE
from operators.kit.prep.sql import (ATHENA, CONFLICT_COLUMN, CONFLICTING_DUPLICATE, DIALECTS, DUCKDB, DUPLICATE,
                                    KEY_HEX_DIGITS, MAX_BUCKETS, RANK_COLUMN, Dialect, SchemaSql, bucketing_sql,
                                    buckets_for)

__all__ = [
    # duckdb_prepare.py, configured.py, athena.py: the entry points
    "prepare", "prepare_configured", "ATHENA_SCHEME", "prepare_athena", "run_athena_prep", "athena_ctas_sql",
    "athena_manifest_sql", "athena_quarantine_sql", "ROW_HASH_COLUMN",
    # outputs.py
    "PrepResult", "read_manifest", "BATCHES_DIR", "MANIFEST_FILE", "PREPARED_FILE", "QUARANTINE_FILE",
    "MANIFEST_COLUMNS", "BUCKET_COLUMN", "REASON_COLUMN", "FILE_COLUMN", "LINE_COLUMN", "RAW_COLUMN",
    # errors.py
    "PrepError", "EmptyWindow", "SchemaError", "near_matches",
    # quarantine.py, lines.py
    "DEFAULT_MAX_QUARANTINED_SHARE", "MAX_LINE_BYTES", "MAX_UNCLOSED_QUOTES", "UNCLOSED_QUOTE", "LINE_TOO_LONG",
    # sql.py
    "Dialect", "DUCKDB", "ATHENA", "DIALECTS", "SchemaSql", "bucketing_sql", "buckets_for", "MAX_BUCKETS",
    "KEY_HEX_DIGITS", "RANK_COLUMN", "CONFLICT_COLUMN", "DUPLICATE", "CONFLICTING_DUPLICATE",
    # inputs.py
    "input_prefixes", "check_input_uri", "INPUT_PREFIXES_SETTING",
]
