"""Compare-and-swap writes of small files under DATA_ROOT, locally and on S3.

A plain write replaces whatever is there: two writers that each read, change and write back lose
one of the changes. Here a write names the state it was computed from (a `Snapshot`) and lands
only if the file still holds that state; otherwise it raises `Conflict` and the caller reads
again. `update` is that loop.

* S3: the object's ETag from the same GET that read its body; the write is a PutObject with
  `If-Match: <etag>`, or `If-None-Match: *` when the object did not exist. S3 answers 412
  (PreconditionFailed) or 409 (ConditionalRequestConflict) when another write came first.
* Local files: the tag is the SHA-256 of the content; the compare and the write (temporary file
  and `os.replace`, so readers never see half a file) run under an exclusive `flock` on a lock
  file beside the target, which serialises writers across threads and processes.

Only writes made through this module are ordered against each other: a plain write to the same
file is not checked.
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import random
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

from batch_worker.storage import Location

#: Conflicting writers retry this many times before `update` gives up.
UPDATE_ATTEMPTS = 50
_CONFLICT_CODES = frozenset({"PreconditionFailed", "ConditionalRequestConflict", "NoSuchKey", "412", "409"})


class Conflict(Exception):
    """The file changed since the snapshot was read (or exists when it was absent): read it again."""


@dataclass(frozen=True)
class Snapshot:
    path: str
    data: bytes | None  # None: the file does not exist
    tag: str | None  # S3: the ETag; local: the content's SHA-256


def read(loc: Location, path: str) -> Snapshot:
    """The file at `path` and the tag a conditional write compares with."""
    if not loc.remote:
        try:
            with open(path, "rb") as handle:
                data = handle.read()
        except FileNotFoundError:
            return Snapshot(path, None, None)
        return Snapshot(path, data, _digest(data))
    from fsspec.asyn import sync

    bucket, key, _ = loc.fs.split_path(path)

    async def get() -> tuple[bytes, str]:
        response = await loc.fs._call_s3("get_object", Bucket=bucket, Key=key)
        try:
            return await response["Body"].read(), response["ETag"]
        finally:
            response["Body"].close()

    try:
        data, etag = sync(loc.fs.loop, get)
    except FileNotFoundError:
        return Snapshot(path, None, None)
    return Snapshot(path, data, etag)


def write_if_unchanged(loc: Location, snapshot: Snapshot, data: bytes) -> None:
    """Write `data` to `snapshot.path` if it still holds what `snapshot` read; else raise `Conflict`."""
    if not loc.remote:
        with _locked(snapshot.path):
            now = read(loc, snapshot.path)
            if now.tag != snapshot.tag:
                raise Conflict(f"{snapshot.path} changed since it was read")
            loc.write_bytes(snapshot.path, data)
        return
    bucket, key, _ = loc.fs.split_path(snapshot.path)
    condition = {"IfMatch": snapshot.tag} if snapshot.data is not None else {"IfNoneMatch": "*"}
    try:
        loc.fs.call_s3("put_object", Bucket=bucket, Key=key, Body=data, **condition)
    except OSError as error:  # s3fs turns a ClientError into an OSError caused by it
        if not _is_conflict(error):
            raise
        raise Conflict(f"{snapshot.path} changed since it was read") from error
    finally:
        loc.fs.invalidate_cache(snapshot.path)


def update(loc: Location, path: str, change: Callable[[bytes | None], bytes | None]) -> bytes | None:
    """Read `path`, write `change(content)` if that is not None, and redo both when another writer came first.

    `change` gets the current content (None when there is no file) and returns the new content,
    or None to leave the file as it is; it may raise to refuse. Returns what was written, or
    None when `change` left the file alone.

    A PUT that lands but whose answer is lost is sent again by the SDK and then fails its own
    condition: `change` then sees its own write. Make `change` return None for a state that
    already holds what it wants (the registry's do), and such a retry changes nothing twice.
    """
    for attempt in range(UPDATE_ATTEMPTS):
        snapshot = read(loc, path)
        new = change(snapshot.data)
        if new is None:
            return None
        try:
            write_if_unchanged(loc, snapshot, new)
            return new
        except Conflict:
            time.sleep(random.uniform(0, 0.01 * min(attempt + 1, 20)))
    raise RuntimeError(f"{path}: {UPDATE_ATTEMPTS} conditional writes in a row lost to other writers; "
                       f"something rewrites this file continuously; retry once it is quiet")


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@contextmanager
def _locked(path: str) -> Iterator[None]:
    directory, name = os.path.split(path)
    os.makedirs(directory, exist_ok=True)
    handle = os.open(os.path.join(directory, f".{name}.lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        os.close(handle)


def _is_conflict(error: BaseException) -> bool:
    cause = error.__cause__
    response = getattr(cause, "response", None) or {}
    code = str(response.get("Error", {}).get("Code", ""))
    status = str(response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
    return code in _CONFLICT_CODES or status in ("409", "412")
