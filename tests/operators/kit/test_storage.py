"""Where the data lives and how the Airflow side reaches it (operators.kit.storage): DATA_ROOT, the s3fs arguments
read from the AWS connection, and a location that is local for a path and on S3 for an s3:// URI."""
from __future__ import annotations

import json
import uuid

from operators.kit import storage


def test_data_root_is_the_environments_without_a_trailing_slash_else_dot_data(monkeypatch):
    monkeypatch.setenv("DATA_ROOT", "s3://bucket/team/")
    assert storage.data_root() == "s3://bucket/team"
    monkeypatch.delenv("DATA_ROOT")
    assert storage.data_root() == ".data"


def test_the_s3_options_come_from_the_connection_and_name_the_local_endpoint(local_aws):
    options = storage.storage_options("aws_default")
    assert options["endpoint_url"] == local_aws.url
    assert (options["key"], options["secret"]) == (local_aws.client_kwargs["aws_access_key_id"],
                                                   local_aws.client_kwargs["aws_secret_access_key"])
    assert options["client_kwargs"] == {"region_name": local_aws.region}
    assert storage.options_for("s3://bucket/key", "aws_default") == options
    assert storage.options_for("s3a://bucket/key", "aws_default") == options
    assert storage.options_for("/data/runs", "aws_default") is None  # a local path needs no connection


def test_a_location_writes_an_s3_uri_through_the_endpoint_and_a_path_locally(local_aws, tmp_path):
    bucket = f"storage-{uuid.uuid4().hex[:12]}"
    local_aws.s3.create_bucket(Bucket=bucket)
    remote = storage.location(f"s3://{bucket}/root")
    remote.write_json(remote.join("a.json"), {"n": 1})
    assert json.loads(local_aws.s3.get_object(Bucket=bucket, Key="root/a.json")["Body"].read()) == {"n": 1}
    local = storage.location(str(tmp_path), aws_conn_id=None)  # no connection is read for a local path
    local.write_json(local.join("b.json"), {"n": 2})
    assert json.loads((tmp_path / "b.json").read_text()) == {"n": 2}
