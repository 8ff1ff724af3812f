"""scripts/sessions.sh: a session is stopped as a whole, and stop_sessions returns only once it is gone."""
from __future__ import annotations

import subprocess

import pytest

from localaws.stack import REPO


def run_bash(script: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", f"source scripts/sessions.sh\n{script}"], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


def test_stop_sessions_waits_for_processes_that_die_a_while_after_sigkill(tmp_path):
    # A member that ignores SIGTERM, and a SIGKILL that lands only a second after it is sent (what a process
    # tearing down a large address space, or one blocked in the kernel, looks like from outside).
    result = run_bash(f"""
        start_session {tmp_path}/member.log bash -c 'trap "" TERM; while :; do sleep 0.1; done'
        sid=$SESSION_PID
        sleep 0.5
        kill() {{ if [[ $1 == -KILL ]]; then (sleep 1; command kill "$@") & else command kill "$@"; fi; }}
        stop_sessions 1 "$sid"
        echo "left: $(session_members "$sid" | tr '\\n' ' ')"
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "left:", result.stdout


def test_stop_sessions_names_what_outlives_sigkill_and_does_not_wait_forever(tmp_path):
    result = run_bash(f"""
        KILL_WAIT_SECONDS=1
        start_session {tmp_path}/member.log bash -c 'trap "" TERM; while :; do sleep 0.1; done'
        sid=$SESSION_PID
        sleep 0.5
        kill() {{ if [[ $1 == -KILL ]]; then return 0; else command kill "$@"; fi; }}
        stop_sessions 1 "$sid"
        command kill -KILL $(session_members "$sid")
    """)
    assert result.returncode == 0, result.stderr
    assert "outlived SIGKILL for 1 s" in result.stderr, result.stderr


@pytest.mark.parametrize("signal_name", ["TERM", "CONT"])
def test_members_gone_before_a_signal_do_not_end_a_caller_under_set_e(signal_name, tmp_path):
    # make up stops its components under `set -e`. Bash's `kill` fails only when it could signal none of the
    # pids it was given: a component whose processes all exit after they were listed, before the SIGTERM or
    # between the SIGTERM and the SIGCONT (a database backend does at once). That must not end the stop halfway.
    result = run_bash(f"""
        set -euo pipefail
        start_session {tmp_path}/member.log bash -c 'while :; do sleep 0.1; done'
        sid=$SESSION_PID
        sleep 0.5
        # by this signal, every listed member is gone: killed here (some may have exited already after the SIGTERM,
        # so that kill may fail), and the signal goes to a pid no process can have (4194304 is above any pid_max)
        kill() {{ if [[ $1 == -{signal_name} ]]; then command kill -KILL "${{@:2}}" 2>/dev/null || true
                  command kill "$1" 4194304; else command kill "$@"; fi; }}
        stop_sessions 5 "$sid"
        echo "after the stop: $(session_members "$sid" | wc -l) left"
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "after the stop: 0 left", result.stdout + result.stderr
