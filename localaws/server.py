"""Start and stop the local AWS endpoint (Batch, S3, CloudWatch Logs, SNS, IAM, Athena) on loopback."""
from __future__ import annotations

import ipaddress
import logging
import os
import socket
import sys
import time
import urllib.error
import urllib.request

from moto.server import ThreadedMotoServer

from localaws import batch

#: Credentials the endpoint accepts; they open nothing outside this machine.
LOCAL_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "localaws", "AWS_SECRET_ACCESS_KEY": "localaws"}
DEFAULT_REGION = "us-east-1"


class NonLoopbackAddress(ValueError):
    """The endpoint may only listen on a loopback address."""


def check_loopback(host: str) -> str:
    """Return `host` if it is a loopback address, else raise NonLoopbackAddress."""
    if host == "localhost":
        return host
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise NonLoopbackAddress(
            f"refusing to bind the local AWS endpoint to {host!r}: give a loopback IP address "
            "(127.0.0.1, another 127.x.y.z, ::1) or 'localhost'"
        ) from None
    if not address.is_loopback:
        raise NonLoopbackAddress(
            f"refusing to bind the local AWS endpoint to {host}: it is not a loopback address, and the "
            "endpoint runs any submitted command as a local process; use 127.0.0.1"
        )
    return host


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def wait_until_ready(url: str, timeout: float = 30.0) -> None:
    """Block until the endpoint at `url` answers, or raise TimeoutError."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            # a cheap page: /moto-api/data.json walks every model and trips over moto's Docker client
            with urllib.request.urlopen(f"{url}/moto-api/", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, OSError) as exc:
            last_error = exc
        time.sleep(0.1)
    raise TimeoutError(f"local AWS endpoint at {url} did not answer within {timeout:.0f}s: {last_error}")


class LocalAWS:
    """The endpoint, in this process: `with LocalAWS(port=0) as aws: boto3.client(..., endpoint_url=aws.url)`."""

    def __init__(self, host: str = "127.0.0.1", port: int = 4566, region: str = DEFAULT_REGION):
        self.host = check_loopback(host)
        self.port = port or free_port(host if host != "localhost" else "127.0.0.1")
        self.region = region
        self._server: ThreadedMotoServer | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def job_environment(self) -> dict[str, str]:
        """What every job process sees of AWS: this endpoint, as a container sees AWS."""
        bin_dir = os.path.dirname(sys.executable)  # the job's `python` and entry points: this environment's
        return {
            "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
            "AWS_ENDPOINT_URL": self.url,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_REGION": self.region,
            **LOCAL_CREDENTIALS,
        }

    def start(self) -> "LocalAWS":
        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request drowns the job logs
        batch.install(job_environment=self.job_environment())
        self._server = ThreadedMotoServer(ip_address=self.host, port=self.port, verbose=False)
        self._server.start()
        wait_until_ready(self.url)
        return self

    def stop(self) -> None:
        if self._server is not None:
            for job in list(batch.dispatcher().running):
                job.terminate("local AWS endpoint stopped")
            self._server.stop()
            self._server = None

    def __enter__(self) -> "LocalAWS":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()


def client_environment(url: str, region: str = DEFAULT_REGION) -> dict[str, str]:
    """Environment for a boto3 client of this endpoint (tests, the demo)."""
    return {"AWS_ENDPOINT_URL": url, "AWS_DEFAULT_REGION": region, **LOCAL_CREDENTIALS}


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
