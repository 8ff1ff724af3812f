"""Where the pipelines' data lives (DATA_ROOT) and how the Airflow side reaches it (s3fs arguments).

The engine, prep and the pipelines all need these. They sit apart from the engine so that prep, which
the engine imports for the manifest, can find DATA_ROOT without importing the engine back.
"""
from __future__ import annotations

import os
from typing import Any

from batch_worker.storage import Location


def data_root() -> str:
    return os.environ.get("DATA_ROOT", ".data").rstrip("/")


def storage_options(aws_conn_id: str | None = "aws_default") -> dict[str, Any]:
    """s3fs arguments from the Airflow AWS connection: its endpoint (the local one, or none on AWS) and keys."""
    from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook

    hook = AwsBaseHook(aws_conn_id=aws_conn_id, client_type="s3")
    creds = hook.get_credentials()
    options: dict[str, Any] = {"key": creds.access_key, "secret": creds.secret_key,
                               "client_kwargs": {"region_name": hook.conn_region_name}}
    if creds.token:
        options["token"] = creds.token
    endpoint = hook.conn_config.get_service_endpoint_url("s3")
    if endpoint:
        options["endpoint_url"] = endpoint
    return options


def options_for(uri: str, aws_conn_id: str | None) -> dict[str, Any] | None:
    """`storage_options` for an s3:// URI, None for a local one."""
    return storage_options(aws_conn_id) if uri.startswith(("s3://", "s3a://")) else None


def location(uri: str, aws_conn_id: str | None = "aws_default") -> Location:
    return Location.parse(uri, options_for(uri, aws_conn_id))
