"""Test set-up: the same config/local.env as the local stack, with a test AIRFLOW_HOME and DATA_ROOT.

The environment is set before anything imports Airflow. The Airflow metadata DB is migrated once
(`.airflow/tests/airflow.db`); the local AWS endpoint runs in-process on a free loopback port.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TEST_HOME = REPO / ".airflow" / "tests"


def local_env(repo: Path = REPO) -> dict[str, str]:
    env = {}
    for line in (repo / "config" / "local.env").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        key, _, value = line.partition("=")
        env[key] = value.replace("${REPO}", str(repo))
    return env


def _configure_environment() -> None:
    env = local_env()
    env["AIRFLOW_HOME"] = str(TEST_HOME)
    env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{TEST_HOME}/airflow.db"
    env["AIRFLOW__CORE__UNIT_TEST_MODE"] = "False"
    env["AIRFLOW__LOGGING__LOGGING_LEVEL"] = "INFO"
    # The product's DAGs plus DAGs that exist only for tests (dag.test() runs only DAGs from a bundle).
    env["AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST"] = json.dumps([
        {"name": "dags-folder", "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle", "kwargs": {}},
        {"name": "test-dags", "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle",
         "kwargs": {"path": str(REPO / "tests" / "fixture_dags")}},
    ])
    os.environ.update(env)
    TEST_HOME.mkdir(parents=True, exist_ok=True)
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))


_configure_environment()


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """A migrated Airflow metadata DB (migrated once; later sessions reuse it)."""
    marker = TEST_HOME / ".migrated"
    import airflow

    if not marker.exists() or marker.read_text() != airflow.__version__:
        subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], check=True,
                       stdout=subprocess.DEVNULL, env=os.environ.copy())
        marker.write_text(airflow.__version__)
    return TEST_HOME / "airflow.db"


@pytest.fixture(scope="session")
def local_aws():
    """The local AWS endpoint on a free loopback port, provisioned from config/batch_resources.json."""
    import boto3

    from localaws import LocalAWS
    from operators import provisioning

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
                           provisioning.Settings.from_env({"BATCH_LOCAL_VCPUS": "2"}))
        yield aws


@pytest.fixture
def data_root(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "data"
    root.mkdir()
    monkeypatch.setenv("DATA_ROOT", str(root))
    return root


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text)
