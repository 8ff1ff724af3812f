"""Start and stop the local AWS endpoint (Batch, S3, CloudWatch Logs, SNS, IAM, Athena) on loopback.

Every request passes `localaws.guard.RequestGuard` (loopback Host, no cross-origin browser request,
SigV4 with this start's keys) before moto's app sees it.
"""
from __future__ import annotations

import ipaddress
import logging
import os
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from typing import TYPE_CHECKING

from localaws.credentials import READY_PATH, Credentials, KeyPair

if TYPE_CHECKING:
    from werkzeug.serving import BaseWSGIServer

    from localaws.guard import RequestGuard

# moto, werkzeug and botocore are imported where the endpoint starts: `python -m localaws stop`, `wait`
# and `connection` run once or more per `make demo` and need none of them (about 2 s each with them).

DEFAULT_REGION = "us-east-1"
#: what a job process inherits from the endpoint's environment (when set); nothing else does
INHERITED_BY_JOBS = ("HOME", "LANG", "LC_ALL", "TMPDIR")


#: A Batch job's time from SubmitJob to RUNNING when its compute environment has free vCPUs.
START_SECONDS_ENV = "LOCALAWS_BATCH_START_SECONDS"
#: A warm compute environment's few seconds on AWS (an instance already up, the image already pulled).
DEFAULT_START_SECONDS = 3.0


def start_seconds_setting(value: str | float | None) -> float:
    """The start latency a setting gives (None or "": DEFAULT_START_SECONDS); ValueError unless 0 to 3600 seconds."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return DEFAULT_START_SECONDS
    try:
        seconds = float(value)
    except ValueError:
        raise ValueError(f"{START_SECONDS_ENV} / --start-seconds must be a number of seconds, not {value!r}") from None
    if not 0 <= seconds <= 3600:
        raise ValueError(f"{START_SECONDS_ENV} / --start-seconds must be from 0 to 3600 seconds, not {value!r}")
    return seconds


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
    """Block until the endpoint at `url` is up and provisioned, or raise TimeoutError."""
    deadline = time.monotonic() + timeout
    last_error: object = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}{READY_PATH}", timeout=2) as response:
                if response.status == 200:
                    return
        except urllib.error.HTTPError as exc:
            last_error = f"HTTP {exc.code}"
        except (urllib.error.URLError, ConnectionError, OSError) as exc:
            last_error = exc
        time.sleep(0.1)
    raise TimeoutError(f"local AWS endpoint at {url} was not ready within {timeout:.0f}s: {last_error}")


class LocalAWS:
    """The endpoint, in this process: `with LocalAWS(port=0) as aws: boto3.client(..., **aws.client_kwargs)`.

    `credentials`: the key pairs to accept (default: new ones); `provision_vcpus`: apply
    config/batch_resources.json at start with that many vCPUs per compute environment (None: do not);
    `start_seconds`: a Batch job's time from SubmitJob to RUNNING when capacity is free (None:
    $LOCALAWS_BATCH_START_SECONDS, else DEFAULT_START_SECONDS). Batch state and its
    scheduler belong to the process: every LocalAWS of one process shares them and the last started
    sets this.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 4566, region: str = DEFAULT_REGION,
                 credentials: Credentials | None = None, provision_vcpus: int | None = None,
                 start_seconds: float | None = None):
        self.start_seconds = start_seconds_setting(os.environ.get(START_SECONDS_ENV) if start_seconds is None
                                                   else start_seconds)
        self.host = check_loopback(host)
        self.port = port or free_port(host if host != "localhost" else "127.0.0.1")
        self.region = region
        self.credentials = credentials or Credentials.generate()
        self.provision_vcpus = provision_vcpus
        self.provisioned: dict[str, list[str]] | None = None
        #: why Batch jobs run unisolated here (set at start), None where each is isolated
        self.isolation_problem: str | None = None
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None
        self._guard: RequestGuard | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def client_kwargs(self) -> dict[str, str]:
        """Keyword arguments of a boto3 client of this endpoint, with the client key pair."""
        return dict(endpoint_url=self.url, region_name=self.region,
                    aws_access_key_id=self.credentials.client.access_key_id,
                    aws_secret_access_key=self.credentials.client.secret_access_key)

    def connection(self, base: dict | None = None) -> dict:
        """An Airflow AWS connection (as AIRFLOW_CONN_* JSON takes it) that reaches this endpoint."""
        return connection(self.url, self.credentials.client, self.region, base)

    def job_environment(self) -> dict[str, str]:
        """All a job process gets besides its job's own variables: what a container on AWS would have."""
        bin_dir = os.path.dirname(sys.executable)  # the job's `python` and entry points: this environment's
        inherited = {name: os.environ[name] for name in INHERITED_BY_JOBS if name in os.environ}
        return {
            **inherited,
            "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', os.defpath)}",
            "AWS_ENDPOINT_URL": self.url,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_REGION": self.region,
            "AWS_ACCESS_KEY_ID": self.credentials.job.access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.credentials.job.secret_access_key,
        }

    def job_sandbox(self):
        """Each job isolated as a container is (localaws/sandbox.py), or None, with `isolation_problem` saying why."""
        from localaws import sandbox

        self.isolation_problem = sandbox.isolation_problem()
        if self.isolation_problem is not None:
            logging.getLogger(__name__).warning("Batch jobs are NOT isolated: %s", self.isolation_problem)
            return None
        return sandbox.JobSandbox(sandbox.load_job_role_grants(),
                                  default_data_root=os.environ.get("BATCH_DATA_ROOT") or os.environ.get("DATA_ROOT") or "")

    def start(self) -> "LocalAWS":
        from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
        from werkzeug.serving import make_server

        from localaws import batch
        from localaws.guard import RequestGuard

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request drowns the job logs
        batch.install(job_environment=self.job_environment(), start_seconds=self.start_seconds,
                      sandbox=self.job_sandbox())
        self._guard = RequestGuard(DomainDispatcherApplication(create_backend_app), self.credentials)
        self._server = make_server(self.host, self.port, self._guard, threaded=True,
                                   request_handler=MotoRequestHandler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="localaws-server", daemon=True)
        self._thread.start()
        try:
            if self.provision_vcpus is not None:
                self.provisioned = self.provision(self.provision_vcpus)
        except BaseException:
            self.stop()
            raise
        self._guard.ready.set()
        return self

    def provision(self, vcpus: int) -> dict[str, list[str]]:
        """Apply config/batch_resources.json (UNMANAGED, `vcpus` each), as `make provision` does."""
        import boto3

        from localaws.repo import REPO

        if str(REPO) not in sys.path:  # the spec and its code live beside this package
            sys.path.insert(0, str(REPO))
        from operators.kit import provisioning

        settings = provisioning.Settings.from_env({**os.environ, "BATCH_ENV_TYPE": "UNMANAGED",
                                                   "BATCH_LOCAL_VCPUS": str(vcpus)})
        return provisioning.apply(boto3.client("batch", **self.client_kwargs), boto3.client("iam", **self.client_kwargs),
                                  provisioning.load_spec(), settings)

    def stop(self) -> None:
        if self._server is not None:
            from localaws import batch

            # its job processes end with it (SIGTERM, SIGKILL after the grace), not after it
            batch.dispatcher().stop_started("local AWS endpoint stopped")
            batch.dispatcher().remove_scratch_root()
            self._server.shutdown()
            self._server.server_close()
            if self._thread is not None:
                self._thread.join()
            self._server = self._thread = None

    def __enter__(self) -> "LocalAWS":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()


def connection(url: str, pair: KeyPair, region: str = DEFAULT_REGION, base: dict | None = None) -> dict:
    """`base` (an Airflow AWS connection) with this endpoint's URL and `pair` as its keys."""
    conn = dict(base or {"conn_type": "aws"})
    conn["login"], conn["password"] = pair.access_key_id, pair.secret_access_key
    conn["extra"] = {"region_name": region, **(conn.get("extra") or {}), "endpoint_url": url}
    return conn


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
