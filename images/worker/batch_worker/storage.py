"""Where batches, worklists and outputs live: a local path or an s3:// URI, through fsspec.

Both sides use it: prep and the house operator on the Airflow side (with `storage_options` read
from the AWS connection), the runtime inside the Batch job (s3fs then finds the endpoint in
AWS_ENDPOINT_URL and credentials in the container's role, or the local endpoint's dummy keys).

Writes are atomic for a reader: locally a file is written under a temporary name and renamed;
on S3 a PUT is atomic per object, so the only rule is to write the marker object last.
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from typing import Any, Iterable

import fsspec


@dataclass(frozen=True)
class Location:
    """A local path or an s3:// URI, with the fsspec filesystem that reaches it."""

    uri: str  # an absolute local path, or s3://bucket/key without a trailing slash
    fs: fsspec.AbstractFileSystem
    remote: bool

    @classmethod
    def parse(cls, uri: str, storage_options: dict | None = None) -> "Location":
        scheme, sep, rest = uri.partition("://")
        if not sep:
            return cls(os.path.abspath(uri), fsspec.filesystem("file"), remote=False)
        if scheme == "file":
            return cls(os.path.abspath(rest), fsspec.filesystem("file"), remote=False)
        if scheme in ("s3", "s3a"):
            import s3fs

            return cls("s3://" + rest.rstrip("/"), s3fs.S3FileSystem(**(storage_options or {})), remote=True)
        raise ValueError(f"unsupported URI scheme {scheme!r} in {uri!r}; use a local path, file:// or s3://")

    def join(self, *parts: str) -> str:
        return "/".join([self.uri.rstrip("/"), *parts]) if self.remote else os.path.join(self.uri, *parts)

    def full(self, path: str) -> str:
        """A path as fsspec lists it, made into this location's kind of URI."""
        return "s3://" + path if self.remote and not path.startswith("s3://") else path

    def child(self, *parts: str) -> "Location":
        return Location(self.join(*parts), self.fs, self.remote)

    # --- reading -----------------------------------------------------------------------------

    def read_bytes(self, path: str | None = None) -> bytes:
        return self.fs.cat_file(path or self.uri)

    def read_json(self, path: str | None = None) -> Any:
        return json.loads(self.read_bytes(path))

    def read_many(self, paths: Iterable[str]) -> dict[str, bytes]:
        """The contents of those of `paths` that exist (one concurrent round on S3)."""
        paths = list(paths)
        if not paths:
            return {}
        if not self.remote:
            found = {}
            for path in paths:
                try:
                    with open(path, "rb") as handle:
                        found[path] = handle.read()
                except FileNotFoundError:
                    continue
            return found
        got = self.fs.cat([p.removeprefix("s3://") for p in paths], on_error="omit")
        return {self.full(k): v for k, v in got.items() if isinstance(v, bytes)}

    def list_files(self, directory: str) -> list[str]:
        """The files directly under `directory` (none when it does not exist), as this location's URIs."""
        if not self.remote:
            try:
                return sorted(os.path.join(directory, name) for name in os.listdir(directory)
                              if not name.startswith(".tmp-"))
            except FileNotFoundError:
                return []
        try:
            entries = self.fs.ls(directory.removeprefix("s3://"), detail=True, refresh=True)
        except FileNotFoundError:
            return []
        return sorted(self.full(e["name"]) for e in entries if e.get("type") == "file")

    # --- writing -----------------------------------------------------------------------------

    def write_bytes(self, path: str, data: bytes) -> None:
        """Write `data` to `path` so that a reader sees either nothing or all of it."""
        if self.remote:
            self.fs.pipe_file(path, data)
            return
        directory = os.path.dirname(path)
        os.makedirs(directory, exist_ok=True)
        handle, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
        try:
            with os.fdopen(handle, "wb") as out:
                out.write(data)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    def write_json(self, path: str, value: Any) -> None:
        self.write_bytes(path, json.dumps(value, indent=1, sort_keys=True, default=str).encode())

    def remove(self, path: str) -> None:
        """Remove the file at `path`, if there is one."""
        try:
            if self.remote:
                self.fs.rm_file(path)
            else:
                os.remove(path)
        except FileNotFoundError:
            pass
