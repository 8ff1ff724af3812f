"""Tests that share a costly fixture run on one pytest-xdist worker (`make test`: `--dist loadgroup`).

A module- or package-scoped fixture is set up once per worker that runs one of its tests: Airflow's API
app and the project's DAGs synced to the DB (tests/dags/test_trigger_form.py), a pipeline run that a run
view's tests read (tests/plugins/test_run_view.py), an endpoint of its own. Spread over four workers it
is set up four times. Each test that uses such a fixture is grouped with the others of its module (or
of its package, for a package's fixture), and the group goes to one worker; every other test is handed
out on its own, as `--dist load` does.

pytest-xdist's own loadgroup names a test's group by rewriting its node id on the worker, which pytest 9
no longer allows (a node's id is read-only). Here each worker writes the groups it collected to a file
named by the controller, and the controller's scheduler reads it once every worker has collected.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

GROUPS_FILE = "airbatch_fixture_groups"


def fixture_group(item: pytest.Item) -> str | None:
    """Where the test's shared fixture lives: the package (a package-scoped fixture) or the module (a module- or
    class-scoped one) whose tests share it, or None when the test shares nothing but the session's."""
    scopes = {defs[-1].scope: defs[-1] for defs in item._fixtureinfo.name2fixturedefs.values()}
    if "package" in scopes:
        return scopes["package"].baseid or "tests"
    if "module" in scopes or "class" in scopes:
        return item.nodeid.split("::", 1)[0]
    return None


def write_groups(config: pytest.Config, items: list[pytest.Item]) -> None:
    """On a worker: {node id: group} of the grouped tests, to the file the controller named."""
    path = getattr(config, "workerinput", {}).get(GROUPS_FILE)
    if path is None:
        return
    groups = {item.nodeid: group for item in items if (group := fixture_group(item)) is not None}
    fd, partial = tempfile.mkstemp(dir=os.path.dirname(path))
    with os.fdopen(fd, "w") as out:
        json.dump(groups, out)
    os.replace(partial, path)  # every worker collects the same tests: whichever writes last writes the same


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node) -> None:
    """On the controller: the file each worker writes its groups to (one folder per run, removed at its end)."""
    config = node.config
    folder = config.stash.get(_folder_key, None)
    if folder is None:
        folder = config.stash[_folder_key] = tempfile.mkdtemp(prefix="airbatch-fixture-groups-")
    node.workerinput[GROUPS_FILE] = os.path.join(folder, "groups.json")


def pytest_unconfigure(config: pytest.Config) -> None:
    folder = config.stash.get(_folder_key, None)
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class FixtureGroupScheduling(LoadScopeScheduling):
        """loadscope where a test's scope is its fixture group, or the test itself."""

        groups: dict[str, str] | None = None

        def _split_scope(self, nodeid: str) -> str:
            if self.groups is None:
                folder = config.stash.get(_folder_key, None)
                path = Path(folder, "groups.json") if folder else None
                self.groups = json.loads(path.read_text()) if path and path.exists() else {}
            return self.groups.get(nodeid, nodeid)

    return FixtureGroupScheduling(config, log)


_folder_key = pytest.StashKey[str]()
