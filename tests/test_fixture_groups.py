"""tests/fixture_groups.py under pytest-xdist: a module's or a package's shared fixture is set up on one worker."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CONFTEST = """
pytest_plugins = ["tests.fixture_groups"]

def pytest_collection_modifyitems(config, items):
    from tests.fixture_groups import write_groups
    write_groups(config, items)
"""

SHARED = """
import os, pytest

@pytest.fixture(scope="module")
def costly():
    with open(os.environ["SETUPS"], "a") as out:
        out.write(os.environ["PYTEST_XDIST_WORKER"] + "\\n")

@pytest.mark.parametrize("n", range(8))
def test_shared(costly, n):
    with open(os.environ["RAN"], "a") as out:
        out.write(f"shared {os.environ['PYTEST_XDIST_WORKER']}\\n")
"""

ALONE = """
import os, time, pytest

@pytest.mark.parametrize("n", range(8))
def test_alone(n):
    time.sleep(0.3)  # long enough that both workers take some
    with open(os.environ["RAN"], "a") as out:
        out.write(f"alone {os.environ['PYTEST_XDIST_WORKER']}\\n")
"""


def test_the_tests_of_a_module_fixture_run_on_one_worker_and_the_others_on_any(tmp_path):
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "conftest.py").write_text(CONFTEST)
    (suite / "test_shared.py").write_text(SHARED)
    (suite / "test_alone.py").write_text(ALONE)
    env = {**os.environ, "PYTHONPATH": str(REPO), "SETUPS": str(tmp_path / "setups"), "RAN": str(tmp_path / "ran")}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "2",
                           "--dist", "loadgroup", "--no-loadscope-reorder", "--rootdir", str(suite), str(suite)],
                          cwd=suite, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "16 passed" in done.stdout
    assert len((tmp_path / "setups").read_text().split()) == 1  # spread over two workers it would be two
    ran = [line.split() for line in (tmp_path / "ran").read_text().splitlines()]
    assert len({worker for kind, worker in ran if kind == "shared"}) == 1
    assert len({worker for kind, worker in ran if kind == "alone"}) == 2
