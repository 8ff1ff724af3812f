"""Local state (Airflow home, metadata DB, data) is private to the user in the test set-up too."""
from __future__ import annotations

import stat
import subprocess
import sys

from tests.conftest import TEST_HOME


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_test_homes_are_private_and_what_the_tests_start_writes_private_files(airflow_db, data_root):
    for folder in (TEST_HOME.parent, TEST_HOME, data_root):
        assert mode(folder) == 0o700, f"{folder}: {oct(mode(folder))}"
    assert mode(airflow_db) & 0o077 == 0, oct(mode(airflow_db))
    leaked = [str(p) for p in TEST_HOME.rglob("*") if not p.is_symlink() and mode(p) & 0o077]
    assert not leaked, leaked
    written = data_root / "from-a-subprocess.txt"
    subprocess.run([sys.executable, "-c", f"open({str(written)!r}, 'w').write('x')"], check=True, timeout=120)
    assert mode(written) == 0o600
