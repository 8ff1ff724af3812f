"""The local stack in one process, for tests and benchmarks: config/local.env, an Airflow home, the endpoint.

    configure(home)          environment from config/local.env, with AIRFLOW_HOME and SQLite under `home`
    migrate(home)            `airflow db migrate` once per Airflow version
    running_endpoint(vcpus)  LocalAWS on a free loopback port, the aws_default connection pointed at it,
                             Batch resources provisioned from config/batch_resources.json
"""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Iterator

REPO = Path(__file__).resolve().parents[1]


def local_env(repo: Path = REPO) -> dict[str, str]:
    env = {}
    for line in (repo / "config" / "local.env").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        key, _, value = line.partition("=")
        env[key] = value.replace("${REPO}", str(repo))
    return env


def configure(home: Path, extra_bundles: list[dict] | None = None) -> None:
    """Set the local environment before anything imports Airflow, with its home and DB under `home`."""
    env = local_env()
    env["AIRFLOW_HOME"] = str(home)
    env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{home}/airflow.db"
    env["AIRFLOW__CORE__UNIT_TEST_MODE"] = "False"
    env["AIRFLOW__LOGGING__LOGGING_LEVEL"] = "INFO"
    if extra_bundles:
        # dag.test() runs only DAGs that belong to a bundle
        env["AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST"] = json.dumps([
            {"name": "dags-folder", "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle", "kwargs": {}},
            *extra_bundles,
        ])
    os.environ.update(env)
    home.mkdir(parents=True, exist_ok=True)
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))


def local_bundle(name: str, path: Path) -> dict:
    return {"name": name, "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle",
            "kwargs": {"path": str(path)}}


def migrate(home: Path) -> Path:
    """A migrated Airflow metadata DB under `home` (migrated once per Airflow version)."""
    marker = home / ".migrated"
    import airflow

    if not marker.exists() or marker.read_text() != airflow.__version__:
        subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], check=True,
                       stdout=subprocess.DEVNULL, env=os.environ.copy())
        marker.write_text(airflow.__version__)
    return home / "airflow.db"


@contextlib.contextmanager
def running_endpoint(vcpus: int | None = None) -> Iterator:
    """LocalAWS on a free loopback port, provisioned; `aws_default` points at it while it runs."""
    import boto3

    from localaws import LocalAWS
    from operators import provisioning

    vcpus = vcpus or int(os.environ.get("BATCH_LOCAL_VCPUS") or os.cpu_count() or 1)
    with LocalAWS(port=0) as aws:
        conn = json.loads(os.environ["AIRFLOW_CONN_AWS_DEFAULT"])
        conn["extra"]["endpoint_url"] = aws.url
        os.environ["AIRFLOW_CONN_AWS_DEFAULT"] = json.dumps(conn)
        kwargs = dict(endpoint_url=aws.url, region_name=aws.region,
                      aws_access_key_id="localaws", aws_secret_access_key="localaws")
        aws.batch = boto3.client("batch", **kwargs)
        aws.logs = boto3.client("logs", **kwargs)
        aws.s3 = boto3.client("s3", **kwargs)
        aws.client_kwargs = kwargs
        provisioning.apply(aws.batch, boto3.client("iam", **kwargs), provisioning.load_spec(),
                           provisioning.Settings.from_env({"BATCH_LOCAL_VCPUS": str(vcpus)}))
        yield aws
