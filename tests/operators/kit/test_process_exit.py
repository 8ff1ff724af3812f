"""operators/kit/process_exit.py: an Airflow process exits without walking its heap again, unless nanobind counts."""
from __future__ import annotations

import os
import subprocess
import sys

from localaws.stack import REPO

# Runs after the handler under test (atexit runs the last registered first): what the exit left behind.
REPORT = "import atexit, gc, sys; atexit.register(lambda: print('frozen', gc.get_freeze_count() > 0))"


def exit_of(code: str) -> subprocess.CompletedProcess:
    """`code` in a fresh interpreter that imports Airflow's settings as every Airflow process does (and with them
    plugins/airflow_local_settings.py), from a folder where the project is not on sys.path by accident."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    return subprocess.run([sys.executable, "-c", f"{REPORT}; import airflow.settings; {code}"], env=env,
                          cwd=REPO / "images", capture_output=True, text=True, timeout=300)


def test_an_airflow_process_freezes_the_collector_as_it_exits_and_keeps_its_exit_code():
    done = exit_of("import logging; logging.getLogger('probe').warning('last words'); sys.exit(3)")
    assert done.returncode == 3, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "frozen True", done.stdout + done.stderr[-2000:]
    assert "last words" in done.stdout + done.stderr  # Airflow logs to stdout


def test_a_process_that_loaded_duckdb_exits_as_before_with_no_leak_report():
    done = exit_of("import duckdb; duckdb.sql('select 1').fetchall()")
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "frozen False", done.stdout + done.stderr[-2000:]
    assert "leaked" not in done.stderr, done.stderr[-2000:]


def test_a_module_whose_namespace_cannot_be_read_leaves_the_exit_as_before():
    # an extension module holding an object whose class's __module__ raises
    odd = ("import types; module = types.ModuleType('odd'); module.__file__ = 'odd.so'; "
           "module.__dict__['x'] = type('Meta', (type,), {'__module__': property(lambda cls: 1 / 0)})('X', (), {})(); "
           "sys.modules['odd'] = module")
    done = exit_of(odd)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "frozen False", done.stdout + done.stderr[-2000:]
