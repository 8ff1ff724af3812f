"""`make rehearsal` (scripts/rehearsal.sh) end to end: production's settings as local processes.

Excluded from `make test` by its marker (it takes several minutes); run it with
`python -m pytest -m rehearsal tests/scripts/test_rehearsal.py`.
"""
from __future__ import annotations

import os
import re
import stat
import subprocess

import pytest

from tests.scripts.stack_processes import kill_leftovers, tail, wait_until_gone

pytestmark = pytest.mark.rehearsal

CHECKS = (r"check: both runs succeeded",
          r"check: pricing_optimization: all [1-9]\d* shard tasks deferred and resumed from the triggerer",
          r"check: units_of_work: all [1-9]\d* shard tasks deferred and resumed from the triggerer",
          r"check: second pricing_optimization run: all [1-9]\d* batches cached, none recomputed",
          r"check: triggerer restarted: 2 shards, one Batch job each",
          r"capacity failover: training_sweep shard \d+, deferred in the triggerer: AWS Batch job \S+: "
          r"capacity shortage: \d+ children RUNNABLE for \d+ s on airbatch-cpu; "
          r"unstarted work moved to airbatch-cpu-ondemand",
          r"alarm airbatch-units_of_work-dead-letters ALARM: Threshold Crossed: .* in run \S+; notified "
          r"\([1-9]\d* message\(s\), actions arn:aws:sns:\S+:airbatch-alarms\)",
          r"airflow metrics: [1-9]\d* OpenTelemetry exports received from the components",
          r"check: every artefact in s3://airbatch-rehearsal/rehearsal-\S+: batches [1-9]",
          r"check: nothing written under the local DATA_ROOT")


@pytest.mark.timeout(1500)
def test_make_rehearsal_runs_production_settings_end_to_end_and_leaves_nothing_behind(tmp_path):
    home, local_data = tmp_path / "rehearsal", tmp_path / "data"
    local_data.mkdir()
    env = {key: value for key, value in os.environ.items() if not key.startswith("AIRFLOW")}
    env.update(REHEARSAL_HOME=str(home), DATA_ROOT=str(local_data))
    log = tmp_path / "rehearsal.out"
    try:
        with open(log, "wb") as out:
            done = subprocess.run(["bash", "-c", "source scripts/env.sh && exec scripts/rehearsal.sh"],
                                  cwd=os.environ.get("REPO") or None, env=env, stdout=out, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, timeout=1400)
        text = log.read_text()
        assert done.returncode == 0, tail(log)
        for check in CHECKS:
            assert re.search(check, text), f"missing {check!r}:\n{tail(log)}"
        assert "rehearsal passed in" in text
        wait_until_gone(str(tmp_path), 60)
        assert not list(local_data.rglob("*"))
        password_file = home / "admin-password"
        assert stat.S_IMODE(password_file.stat().st_mode) == 0o600
        password = password_file.read_text().strip().encode()
        for path in [log, *home.rglob("*.log")]:
            assert password not in path.read_bytes(), f"{path} holds the admin password"
    finally:
        kill_leftovers(str(tmp_path))
