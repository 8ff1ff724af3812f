"""Test set-up: the same config/local.env as the local stack, with a test AIRFLOW_HOME and DATA_ROOT.

The environment is set before anything imports Airflow. The Airflow metadata DB is migrated once
(`.airflow/tests/airflow.db`); the local AWS endpoint runs in-process on a free loopback port.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from localaws.stack import REPO, configure, local_bundle, migrate, running_endpoint

TEST_HOME = REPO / ".airflow" / "tests"

# The product's DAGs plus DAGs that exist only for tests.
configure(TEST_HOME, extra_bundles=[local_bundle("test-dags", REPO / "tests" / "fixture_dags")])


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """A migrated Airflow metadata DB (migrated once; later sessions reuse it)."""
    return migrate(TEST_HOME)


@pytest.fixture(scope="session")
def local_aws():
    """The local AWS endpoint on a free loopback port, provisioned from config/batch_resources.json."""
    with running_endpoint(vcpus=2) as aws:
        yield aws


@pytest.fixture
def data_root(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "data"
    root.mkdir()
    monkeypatch.setenv("DATA_ROOT", str(root))
    return root
