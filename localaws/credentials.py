"""The two key pairs the local endpoint accepts, generated for each start.

    client   what Airflow's aws_default connection, the tests and the scripts sign with
    job      what Batch job processes get: the local stand-in for a job role; it may not call Batch

Kept in memory, or in a file readable by its owner only (`python -m localaws serve --credentials
FILE`), so that a restarted endpoint accepts the pair a running Airflow already holds.
"""
from __future__ import annotations

import errno
import json
import os
import secrets
import stat
import string
from dataclasses import dataclass
from pathlib import Path

#: The endpoint's readiness path: answered 200 once it is up and provisioned (guard.py), polled by
#: `wait_until_ready`. Here, with the other names clients and the endpoint share, so that a client
#: needs neither moto nor botocore to wait for it.
READY_PATH = "/_localaws/ready"

FILE_MODE = 0o600
#: under AIRFLOW_HOME, where the local stack keeps it
CREDENTIALS_FILE_NAME = "localaws-credentials.json"
_KEY_ALPHABET = string.ascii_uppercase + string.digits


class CredentialsFileError(RuntimeError):
    """The credentials file is unsafe or unreadable."""


@dataclass(frozen=True)
class KeyPair:
    access_key_id: str
    secret_access_key: str = ""

    def __repr__(self) -> str:  # a secret must not reach a log or a traceback
        return f"KeyPair(access_key_id={self.access_key_id!r}, secret_access_key=<hidden>)"

    @classmethod
    def generate(cls, prefix: str) -> "KeyPair":
        return cls(prefix + "".join(secrets.choice(_KEY_ALPHABET) for _ in range(20 - len(prefix))),
                   secrets.token_urlsafe(30))

    def as_dict(self) -> dict[str, str]:
        return {"access_key_id": self.access_key_id, "secret_access_key": self.secret_access_key}


@dataclass(frozen=True)
class Credentials:
    client: KeyPair
    job: KeyPair

    @classmethod
    def generate(cls) -> "Credentials":
        return cls(client=KeyPair.generate("LKIACLIENT"), job=KeyPair.generate("LKIAJOB"))

    def secret_for(self, access_key_id: str) -> str | None:
        for pair in (self.client, self.job):
            if secrets.compare_digest(pair.access_key_id, access_key_id):
                return pair.secret_access_key
        return None

    def is_job_key(self, access_key_id: str) -> bool:
        return secrets.compare_digest(self.job.access_key_id, access_key_id)

    # -- the file -------------------------------------------------------------------------------

    @classmethod
    def load_or_create(cls, path: Path | str) -> "Credentials":
        """The pairs in `path` if it exists (it must be private to this user), else new ones written there."""
        try:
            return cls.load(path)
        except FileNotFoundError:
            credentials = cls.generate()
            try:
                credentials.write(path)
            except FileExistsError:  # another start wrote it first: use that one
                return cls.load(path)
            return credentials

    @classmethod
    def load(cls, path: Path | str) -> "Credentials":
        path = Path(path)
        try:
            # not following a link, not blocking on a FIFO: what is opened is what fstat checks
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno != errno.ELOOP:
                raise
            raise CredentialsFileError(f"refusing the local endpoint's credentials file {path}: it is a symbolic "
                                       f"link; delete it (a new file is written at the next start)") from None
        try:
            info = os.fstat(fd)
            problem = _unsafe(info)
            if problem:
                raise CredentialsFileError(
                    f"refusing the local endpoint's credentials file {path}: {problem}. It holds the keys to the "
                    f"endpoint, which runs submitted commands as processes of yours; delete it (a new one is "
                    f"written at the next start) or fix it with: chown {os.getuid()} {path} && chmod 600 {path}")
            with os.fdopen(fd, "r", encoding="utf-8") as handle:
                fd = -1
                data = json.load(handle)
        except json.JSONDecodeError as exc:
            raise CredentialsFileError(f"the local endpoint's credentials file {path} is not JSON ({exc}): "
                                       "delete it, a new one is written at the next start") from None
        finally:
            if fd >= 0:
                os.close(fd)
        try:
            return cls(client=KeyPair(**data["client"]), job=KeyPair(**data["job"]))
        except (KeyError, TypeError) as exc:
            raise CredentialsFileError(
                f"the local endpoint's credentials file {path} lacks {exc}: it needs \"client\" and \"job\", each "
                "with access_key_id and secret_access_key; delete it, a new one is written at the next start") from None

    def write(self, path: Path | str) -> None:
        """Create `path` with mode 0600 from the first byte; an existing file is never replaced."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, FILE_MODE)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump({"client": self.client.as_dict(), "job": self.job.as_dict()}, handle, indent=1)


def _unsafe(info: os.stat_result) -> str | None:
    if not stat.S_ISREG(info.st_mode):
        return "it is not a regular file"
    if info.st_uid != os.getuid():
        return f"it belongs to user id {info.st_uid}, not to you ({os.getuid()})"
    if stat.S_IMODE(info.st_mode) != FILE_MODE:
        return f"its mode is {stat.S_IMODE(info.st_mode):04o}, not 0600 (others could read the keys)"
    return None
