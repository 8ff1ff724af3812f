"""The browser test's stack: `make up` (scripts/up.sh) in a home of its own, on free ports, and Debian's Chromium.

Runs only under `make test-ui` (AIRBATCH_UI_TEST=1): it takes minutes and needs /usr/bin/chromium.
AIRBATCH_UI_BASE_URL and AIRBATCH_UI_HOME point it at a stack that is already up instead.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from localaws.stack import REPO

CHROMIUM = os.environ.get("AIRBATCH_CHROMIUM", "/usr/bin/chromium")
READY_TIMEOUT_S = 420
STOP_TIMEOUT_S = 90


def pytest_collection_modifyitems(config, items):
    if os.environ.get("AIRBATCH_UI_TEST") == "1":
        return
    skip = pytest.mark.skip(reason="the browser test runs with `make test-ui` (AIRBATCH_UI_TEST=1)")
    for item in items:
        if "tests/ui/" in str(item.fspath):
            item.add_marker(skip)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Stack:
    base_url: str
    home: Path
    data_root: Path

    @property
    def password(self) -> str:
        return json.loads((self.home / "simple_auth_manager_passwords.json.generated").read_text())["admin"]


@pytest.fixture(scope="session")
def stack(tmp_path_factory):
    if os.environ.get("AIRBATCH_UI_BASE_URL"):
        home = Path(os.environ["AIRBATCH_UI_HOME"])
        data = Path(os.environ.get("AIRBATCH_UI_DATA_ROOT") or home.parent / "data")
        yield Stack(os.environ["AIRBATCH_UI_BASE_URL"].rstrip("/"), home, data)
        return
    root = tmp_path_factory.mktemp("ui-stack")
    home, data = root / "home", root / "data"
    api_port, aws_port = free_port(), free_port()
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("AIRFLOW", "DATA_ROOT", "LOCALAWS"))}
    env.update(AIRFLOW_HOME=str(home), DATA_ROOT=str(data), AIRFLOW__API__PORT=str(api_port),
               LOCALAWS_PORT=str(aws_port), SHARD_RETRY_DELAY_S="1")
    log = root / "up.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(["bash", "-c", "source scripts/env.sh && exec scripts/up.sh"], cwd=REPO, env=env,
                                   stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + READY_TIMEOUT_S
    try:
        while "Airflow is ready at" not in log.read_text(errors="replace"):
            if process.poll() is not None:
                raise RuntimeError(f"make up exited ({process.returncode}):\n{log.read_text(errors='replace')[-4000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"make up not ready after {READY_TIMEOUT_S} s:\n{log.read_text()[-4000:]}")
            time.sleep(2)
        yield Stack(f"http://127.0.0.1:{api_port}", home, data)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)


@pytest.fixture(scope="session")
def shots(tmp_path_factory):
    """The folder the steps' screenshots go to (printed, so a person can look at them)."""
    folder = Path(os.environ.get("AIRBATCH_UI_SCREENSHOTS") or tmp_path_factory.mktemp("ui-screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    print(f"\nscreenshots: {folder}", flush=True)
    return folder


@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `make test-ui` installs Debian's chromium (apt-get install chromium)")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium
        chromium.close()
