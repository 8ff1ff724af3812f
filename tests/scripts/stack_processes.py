"""Run the repository's scripts as a user would, in a private AIRFLOW_HOME and DATA_ROOT, and find what
they left running: every process whose command line or environment names that private folder."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from localaws.stack import REPO, local_env

# What tests/conftest.py set for the in-process stack; a script must get the local defaults instead.
TEST_ONLY_SETTINGS = ("AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST", "AIRFLOW__CORE__UNIT_TEST_MODE")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def script_environment(root: Path, **overrides: str) -> dict[str, str]:
    """The environment `make` would give a script, with everything local under `root`: the metadata DB is the
    home's own PostgreSQL (scripts/env.sh), and LOCALAWS_PORT alone moves the endpoint and its connection."""
    env = {key: value for key, value in os.environ.items()
           if key not in local_env() and key not in TEST_ONLY_SETTINGS and not key.startswith("AIRFLOW_")}
    home, data = root / "airflow", root / "data"
    home.mkdir(parents=True, exist_ok=True)
    env.update(AIRFLOW_HOME=str(home), DATA_ROOT=str(data), LOCALAWS_PORT=str(free_port()))
    env.update(overrides)
    return env


def start_script(command: str, env: dict[str, str], log: Path) -> subprocess.Popen:
    """`command` under bash from the repository root, as the leader of a new process group (a terminal's job).

    Ctrl-C and SIGTERM start at their defaults, as in a terminal: a suite started in the background
    (`make test &`) passes SIGINT down ignored, and a shell cannot trap a signal it started with ignored.
    """
    with open(log, "wb") as out:
        return subprocess.Popen(["bash", "-c", f"source scripts/env.sh && {command}"], cwd=REPO, env=env,
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, preexec_fn=_default_signals)


def _default_signals() -> None:
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGQUIT):
        signal.signal(sig, signal.SIG_DFL)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""


def _standard_streams(proc: Path) -> str:
    links = []
    for fd in ("0", "1", "2"):
        try:
            links.append(os.readlink(proc / "fd" / fd))
        except OSError:
            pass
    return " ".join(links)


def processes_naming(marker: str) -> dict[int, str]:
    """pid -> command line of every live process whose command line, environment or standard streams
    name `marker` (Airflow's processes overwrite their command line and environment with setproctitle,
    but keep writing to the log files they were started with)."""
    found, needle = {}, marker.encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        cmdline = _read(proc / "cmdline")
        if not cmdline or b"\nState:\tZ" in _read(proc / "status"):
            continue
        if needle in cmdline or needle in _read(proc / "environ") or marker in _standard_streams(proc):
            found[int(proc.name)] = cmdline.replace(b"\0", b" ").decode(errors="replace").strip()
    return found


def batch_job_processes(marker: str) -> dict[int, str]:
    return {pid: cmd for pid, cmd in processes_naming(marker).items()
            if b"AWS_BATCH_JOB_ID=" in _read(Path(f"/proc/{pid}/environ"))}


def wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None, log: Path | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the script exited ({proc.returncode}) before {what}:\n{tail(log)}")
        time.sleep(0.5)
    raise AssertionError(f"no {what} within {timeout:.0f} s:\n{tail(log)}")


def tail(log: Path | None, chars: int = 4000) -> str:
    return log.read_text(errors="replace")[-chars:] if log and log.exists() else ""


def kill_leftovers(marker: str) -> None:
    """After a test: nothing it started may outlive it, whatever it asserted."""
    for pid in processes_naming(marker):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def wait_until_gone(marker: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while (left := processes_naming(marker)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not left, f"still running {timeout:.0f} s later: {left}"
