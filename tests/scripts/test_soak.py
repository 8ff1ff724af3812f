"""`make soak` (scripts/soak.py), short: the always-on stack under a burst of use at once, checked end to end.

Excluded from `make test` by its marker (minutes); run it with `python -m pytest -m soak tests/scripts/test_soak.py`,
or the full soak with `make soak`.
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from localaws.stack import REPO
from tests.scripts.stack_processes import kill_leftovers, wait_until_gone

pytestmark = pytest.mark.soak


@pytest.mark.timeout(2400)
def test_a_short_soak_ends_every_run_in_success_with_one_batch_job_per_shard_attempt(tmp_path):
    root = tmp_path / "soak"
    try:
        done = subprocess.run([sys.executable, "scripts/soak.py", "--runs", "5", "--idle-seconds", "20",
                               "--settle-seconds", "5", "--root", str(root), "--figures", str(tmp_path / "figures.json")],
                              cwd=REPO, capture_output=True, text=True, timeout=2300)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        for step in ("triggered 5 units_of_work runs", "through the REST API", "cleared soak__slow's failed shard",
                     "SIGKILL to the triggerer: make up restarted it", "SIGTERM to make up's process group",
                     "make up #2 ready", "through the CLI", "every run succeeded: 6 units_of_work, 6 pricing_optimization",
                     "one Batch job per shard attempt"):
            assert step in done.stdout, step
        figures = json.loads((tmp_path / "figures.json").read_text())
        assert figures["stop_seconds"] > 0 and figures["stop_seconds_final"] > 0, figures  # measured, not judged
        assert figures["trigger_to_first_submit_s"]["runs"] == 5
        wait_until_gone(str(root), 60)
    finally:
        kill_leftovers(str(root))
