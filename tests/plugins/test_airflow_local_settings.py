"""plugins/airflow_local_settings.py: what every Airflow process imports at start."""
from __future__ import annotations

import os
import subprocess
import sys

from localaws.stack import REPO


def test_every_airflow_process_checks_schemas_once_through_the_local_settings():
    """Airflow imports airflow_local_settings from the plugins folder at start: the CLI, the scheduler, tasks."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    probe = "import airflow.settings, jsonschema; print(getattr(jsonschema.validate, 'checks_schemas_once', False))"
    done = subprocess.run([sys.executable, "-c", probe], env=env, cwd=REPO / "images", capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "True", done.stdout + done.stderr[-2000:]
