"""Test set-up: the same config/local.env as the local stack, with a test AIRFLOW_HOME and DATA_ROOT.

The environment is set before anything imports Airflow. The Airflow metadata DB is migrated once per
checkout and Airflow version (`.airflow/tests/migrated/`); each test process (the single one, or each
pytest-xdist worker: `make test` runs several) starts from its own fresh copy of it in its own Airflow
home (`.airflow/tests/main/`, `.airflow/tests/gw0/`, ...), so runs in parallel never share a SQLite DB.
The local AWS endpoint runs in-process on a free loopback port, one per test process.
"""
from __future__ import annotations

import fcntl
import os
import stat
import sys
from pathlib import Path

import pytest

# Imported below before pytest registers it as a plugin: rewrite its asserts from the start, or pytest warns
# on every run that it cannot.
pytest.register_assert_rewrite("tests.fixture_groups")

from localaws.server import START_SECONDS_ENV
from localaws.stack import REPO, configure, copy_db, local_bundle, migrate, running_endpoint
from operators.kit.param_checks import check_param_schemas_once
from tests.fixture_groups import fixture_group, write_groups

pytest_plugins = ["tests.fixture_groups"]  # the controller's scheduler of those groups

# AIRBATCH_TEST_HOME lets two test runs in one checkout keep separate Airflow DBs.
TESTS_HOME = Path(os.environ.get("AIRBATCH_TEST_HOME") or REPO / ".airflow" / "tests")
MIGRATED_HOME = TESTS_HOME / "migrated"
# This process's own Airflow home: pytest-xdist names its workers gw0, gw1, ... before conftest is imported.
TEST_HOME = TESTS_HOME / os.environ.get("PYTEST_XDIST_WORKER", "main")

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


keep_private(TESTS_HOME)
keep_private(TEST_HOME)
# The product's DAGs plus DAGs that exist only for tests.
configure(TEST_HOME, extra_bundles=[local_bundle("test-dags", REPO / "tests" / "fixture_dags")])
# dag.test() re-checks every Param's schema before each task: half a system test's time (operators/kit/param_checks.py).
check_param_schemas_once()
# Batch jobs start at once in tests (the in-process endpoint, and an endpoint a test starts with this
# environment): a test about the start latency asks for it (tests/localaws/test_batch_timing.py).
os.environ[START_SECONDS_ENV] = "0"


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """This process's Airflow metadata DB: a fresh copy of the DB migrated once per checkout and version."""
    with open(TESTS_HOME / ".migrate.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # the first worker migrates; the others wait for it, then copy
        try:
            migrated = migrate(MIGRATED_HOME)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    copy_db(migrated, TEST_HOME / "airflow.db")
    settings = sys.modules.get("airflow.settings")
    if getattr(settings, "engine", None) is not None:
        settings.engine.dispose()  # a connection opened before the copy would still see the old file
    return TEST_HOME / "airflow.db"


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


def pytest_collection_modifyitems(config, items):
    """The longest tests first, so that parallel workers (`make test`: pytest-xdist) do not end on one of them;
    the tests that share a module's or a package's fixture on one worker (tests/fixture_groups.py).

    Starting a whole stack (tests/scripts) takes minutes, a system test tens of seconds, a slow one seconds,
    most others less than one. A module or package fixture can cost as much as its tests (a pipeline run
    that a run view's tests read, Airflow's API app, an endpoint): its tests form one group, set up on one
    worker instead of on each. Each group, and each module, moves as a whole to the place of its longest
    test, and the sort is stable: tests stay together and in their file's order, so a worker sets each
    module fixture up once (one set up twice on a worker's endpoint would create its resources twice).
    """
    def weight(item) -> int:
        if item.nodeid.startswith("tests/scripts/"):
            return 0
        if item.get_closest_marker("system"):
            return 1
        return 2 if item.get_closest_marker("slow") else 3

    unit_of = {item.nodeid: fixture_group(item) or item.nodeid.split("::", 1)[0] for item in items}
    unit_weight: dict[str, int] = {}
    for item in items:
        unit = unit_of[item.nodeid]
        unit_weight[unit] = min(unit_weight.get(unit, 3), weight(item))
    items.sort(key=lambda item: unit_weight[unit_of[item.nodeid]])
    write_groups(config, items)
