"""The local stack in one process, for tests and benchmarks: config/local.env, an Airflow home, the endpoint.

    configure(home)          environment from config/local.env, with AIRFLOW_HOME and SQLite under `home`
    migrate(home)            `airflow db migrate` once per Airflow version
    copy_db(source, target)  a migrated DB copied, for test runs that each want their own
    running_endpoint(vcpus)  LocalAWS on a free loopback port with new credentials, the aws_default
                             connection pointed at it with the client key pair, Batch resources
                             provisioned from config/batch_resources.json; Batch jobs start at once
                             (start_seconds=0) unless start_seconds says otherwise
"""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Iterator

from localaws.repo import REPO


def local_env(repo: Path = REPO) -> dict[str, str]:
    env = {}
    for line in (repo / "config" / "local.env").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        key, _, value = line.partition("=")
        value = value.replace("${REPO}", str(repo))
        # as scripts/env.sh: a value may name LOCALAWS_PORT, given in the environment or above it in the file
        env[key] = value.replace("${LOCALAWS_PORT}", os.environ.get("LOCALAWS_PORT") or env.get("LOCALAWS_PORT", ""))
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
    """A migrated Airflow metadata DB under `home` (migrated once per Airflow version).

    `home` need not be the environment's AIRFLOW_HOME: the migration runs with its own home and DB.
    """
    marker = home / ".migrated"
    import airflow

    if not marker.exists() or marker.read_text() != airflow.__version__:
        home.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "AIRFLOW_HOME": str(home),
               "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db"}
        subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], check=True,
                       stdout=subprocess.DEVNULL, env=env)
        marker.write_text(airflow.__version__)
    return home / "airflow.db"


def copy_db(source: Path, target: Path) -> Path:
    """`target` becomes a consistent copy of the SQLite DB `source` (its WAL included): a fresh DB in no time."""
    import sqlite3

    for leftover in (target, target.with_name(target.name + "-wal"), target.with_name(target.name + "-shm")):
        leftover.unlink(missing_ok=True)
    with contextlib.closing(sqlite3.connect(source)) as src, contextlib.closing(sqlite3.connect(target)) as dst:
        src.backup(dst)
    return target


@contextlib.contextmanager
def running_endpoint(vcpus: int | None = None, start_seconds: float = 0.0) -> Iterator:
    """LocalAWS on a free loopback port, provisioned; `aws_default` points at it while it runs.

    `start_seconds` (a Batch job's time from submit to RUNNING) is 0 here whatever
    LOCALAWS_BATCH_START_SECONDS says: tests and benchmarks time their own work, not a simulated
    wait; a test about that wait sets it (`localaws.batch.dispatcher().start_seconds`).
    """
    import boto3

    from localaws.server import LocalAWS

    vcpus = vcpus or int(os.environ.get("BATCH_LOCAL_VCPUS") or os.cpu_count() or 1)
    previous = os.environ.get("AIRFLOW_CONN_AWS_DEFAULT")
    with LocalAWS(port=0, provision_vcpus=vcpus, start_seconds=start_seconds) as aws:
        os.environ["AIRFLOW_CONN_AWS_DEFAULT"] = json.dumps(aws.connection(json.loads(previous or "{}") or None))
        try:
            aws.batch = boto3.client("batch", **aws.client_kwargs)
            aws.logs = boto3.client("logs", **aws.client_kwargs)
            aws.s3 = boto3.client("s3", **aws.client_kwargs)
            yield aws
        finally:
            if previous is None:
                os.environ.pop("AIRFLOW_CONN_AWS_DEFAULT", None)
            else:
                os.environ["AIRFLOW_CONN_AWS_DEFAULT"] = previous
