"""Tests of operators.kit.prep.athena: the CTAS, its submission and the Athena path against moto."""
from __future__ import annotations

import boto3
import pytest

from operators.kit.prep import ATHENA, DUCKDB, SchemaSql, athena_ctas_sql, bucketing_sql, read_manifest, run_athena_prep
from tests.operators.kit.prep.samples import SCHEMA


def test_athena_ctas_uses_the_same_checks_window_and_bucket_as_duckdb():
    window = ("2026-01-01", "2026-02-01")
    sql = athena_ctas_sql("sales.raw", SCHEMA, "sales.prepped", "s3://lake/prepped/run1/", 3000, window)
    text_columns = [c.name for c in SCHEMA.columns if c.dtype != "string"]
    athena, duck = SchemaSql(SCHEMA, ATHENA, text_columns), SchemaSql(SCHEMA, DUCKDB, text_columns)

    assert sql.startswith("CREATE TABLE sales.prepped\nWITH (format = 'PARQUET', "
                          "external_location = 's3://lake/prepped/run1/', "
                          "bucketed_by = ARRAY['bucket'], bucket_count = 3000)")
    assert f"{bucketing_sql(SCHEMA, 3000, 'athena', text_columns)} AS bucket" in sql
    assert [reason for reason, _ in athena.checks()] == [reason for reason, _ in duck.checks()]
    assert f"WHERE {athena.valid()}\n  AND {athena.in_scope(window)}" in sql
    assert "DATE '2026-01-01'" in sql and "DATE '2026-02-01'" in sql
    unique = ", ".join(SchemaSql(SCHEMA, ATHENA).value(name) for name in SCHEMA.unique_key)
    assert f"PARTITION BY {unique}" in sql and "_prep_rank = 1 AND NOT _prep_conflict" in sql
    # The two dialects differ only in how functions are spelled, not in what is checked.
    from operators.kit.prep.sql import _BLANKS as blanks

    duck_in_athena_spelling = duck.valid()
    for old, new in (("TRY_CAST", "try_cast"), ("isnan", "is_nan"), ("isinf", "is_infinite"), ("DOUBLE", "double"),
                     ("regexp_matches", "regexp_like"),
                     ("DATE)", "date)"), *((DUCKDB.trim.format(expr=f'"{n}"', chars=blanks),
                                            ATHENA.trim.format(expr=f'"{n}"', chars=blanks)) for n in SCHEMA.names)):
        duck_in_athena_spelling = duck_in_athena_spelling.replace(old, new)
    assert duck_in_athena_spelling == athena.valid()
    with pytest.raises(ValueError, match="bucket_count"):
        athena_ctas_sql("sales.raw", SCHEMA, "sales.prepped", "s3://lake/x/", 10_001)
    with pytest.raises(ValueError, match="not a \\[database.\\]table name"):
        athena_ctas_sql("raw; DROP TABLE x", SCHEMA, "sales.prepped", "s3://lake/x/", 8)


def test_run_athena_prep_submits_the_generated_ctas(moto_endpoint):
    window = ("2026-01-01", "2026-01-08")
    execution_id = run_athena_prep("sales.raw", SCHEMA, "sales.prepped", "s3://lake/prepped/", 64,
                                   database="sales", output_location="s3://lake/athena-results/",
                                   window=window, poll_seconds=1)
    athena = boto3.client("athena", endpoint_url=moto_endpoint, region_name="us-east-1")
    execution = athena.get_query_execution(QueryExecutionId=execution_id)["QueryExecution"]
    assert execution["Query"] == athena_ctas_sql("sales.raw", SCHEMA, "sales.prepped", "s3://lake/prepped/", 64, window)
    assert execution["QueryExecutionContext"]["Database"] == "sales"
    assert execution["ResultConfiguration"]["OutputLocation"].startswith("s3://lake/athena-results/")
    assert execution["Status"]["State"] == "SUCCEEDED"


def athena_result(header: list[str], rows: list[list[str]]) -> dict:
    return {"rows": [{"Data": [{"VarCharValue": v} for v in values]} for values in [header, *rows]],
            "column_info": [{"Name": h, "Type": "varchar"} for h in header]}


def test_prepare_configured_runs_the_athena_path_for_an_athena_table(moto_endpoint):
    """The Athena path's API calls against the endpoint: CTAS, quarantine counts, manifest query, manifest file.

    moto runs no SQL, so the query results Athena would return are queued through moto's API.
    """
    import requests

    from operators.kit.prep import athena_manifest_sql, athena_quarantine_sql, prepare_configured

    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    s3.create_bucket(Bucket="lake")
    files = [["s3://lake/prep/run1/batches/q_bucket-00003", "3", "120", "7", "a1"],
             ["s3://lake/prep/run1/batches/q_bucket-00005", "5", "80", "4", "b2"]]
    requests.post(f"{moto_endpoint}/moto-api/static/athena/query-results", json={"results": [
        athena_result(["rows"], []),  # the CTAS
        athena_result(["reason", "n"], [["null:segment", "3"], ["out_of_range:price", "2"]]),
        athena_result(["uri", "bucket", "rows", "units", "content_hash"], files),
    ]}).raise_for_status()
    options = {"key": "testing", "secret": "testing", "endpoint_url": moto_endpoint,
               "client_kwargs": {"region_name": "us-east-1"}}
    window = ("2026-01-01", "2026-01-08")
    result = prepare_configured("athena://sales.raw", SCHEMA, "s3://lake/prep/run1", 64, window=window,
                                storage_options=options,
                                env={"ATHENA_OUTPUT_LOCATION": "s3://lake/athena-results/", "ATHENA_POLL_SECONDS": "1"})
    assert (result.rows_ok, result.rows_quarantined, result.units, result.batches) == (200, 5, 11, 2)
    assert result.quarantined_by_reason == {"null:segment": 3, "out_of_range:price": 2}
    manifest = read_manifest(result.manifest_uri, options)
    assert manifest["uri"].tolist() == [f[0] for f in files] and manifest["rows"].tolist() == [120, 80]
    assert manifest["content_hash"].tolist() == ["athena-3-a1", "athena-5-b2"]

    athena = boto3.client("athena", endpoint_url=moto_endpoint, region_name="us-east-1")
    ids = athena.list_query_executions()["QueryExecutionIds"]
    queries = [athena.get_query_execution(QueryExecutionId=i)["QueryExecution"]["Query"] for i in ids]
    target = next(q.split()[2] for q in queries if q.startswith("CREATE TABLE sales.prep_"))
    assert athena_ctas_sql("sales.raw", SCHEMA, target, "s3://lake/prep/run1/batches/", 64, window) in queries
    assert athena_quarantine_sql("sales.raw", SCHEMA, window) in queries
    assert athena_manifest_sql(target, SCHEMA) in queries
