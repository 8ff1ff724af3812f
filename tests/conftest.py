"""Test set-up: the same config/local.env as the local stack, with a test AIRFLOW_HOME and DATA_ROOT.

The environment is set before anything imports Airflow. The Airflow metadata DB is migrated once
(`.airflow/tests/airflow.db`); the local AWS endpoint runs in-process on a free loopback port.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from localaws.server import START_SECONDS_ENV
from localaws.stack import REPO, configure, local_bundle, migrate, running_endpoint

# AIRBATCH_TEST_HOME lets two test runs in one checkout keep separate Airflow DBs.
TEST_HOME = Path(os.environ.get("AIRBATCH_TEST_HOME") or REPO / ".airflow" / "tests")

# Test homes hold an Airflow DB, logs and the endpoint's credentials: private to the user, like the
# local stack's (scripts/env.sh). Whatever the tests start inherits the umask.
os.umask(0o077)


def keep_private(folder: Path) -> None:
    """Create `folder` 0700 and strip group/other bits from everything already in it."""
    folder.mkdir(parents=True, exist_ok=True)
    if folder.parent.resolve().is_relative_to(REPO.resolve()):  # .airflow/; never a shared folder such as /tmp
        folder.parent.chmod(stat.S_IMODE(folder.parent.stat().st_mode) & 0o700)
    for path in [folder, *folder.rglob("*")]:
        try:
            if not path.is_symlink():
                path.chmod(stat.S_IMODE(path.stat().st_mode) & 0o700)
        except FileNotFoundError:  # removed meanwhile by a run beside this one
            pass


keep_private(TEST_HOME)
# The product's DAGs plus DAGs that exist only for tests.
configure(TEST_HOME, extra_bundles=[local_bundle("test-dags", REPO / "tests" / "fixture_dags")])
# Batch jobs start at once in tests (the in-process endpoint, and an endpoint a test starts with this
# environment): a test about the start latency asks for it (tests/localaws/test_batch_timing.py).
os.environ[START_SECONDS_ENV] = "0"


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
    root.mkdir(mode=0o700)
    monkeypatch.setenv("DATA_ROOT", str(root))
    return root
