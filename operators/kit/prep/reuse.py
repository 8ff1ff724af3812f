"""Why a prepare was reused, or copied from another run: `_PREPARED.json`, the fingerprint, the prep index.

`_PREPARED.json`, written last, holds the fingerprint of what was prepared and the counts. A later
`prepare` into the same `out_uri` with the same fingerprint returns those counts and writes
nothing (a cleared prepare task of the same run, on unchanged input); with `reuse_root`, a
prepare of the same fingerprint into another folder under that root (another run of the
pipeline) is copied, hard-linked where possible, found through `<root>/prep-index/`. The
fingerprint covers every input file's path, size, modification time and inode (ETag on S3),
the schema, the window, the batching and quarantine limits, prep's own code (every module of
this package) and DuckDB's release; the reuse also needs the manifest and every batch it lists to be in place.
"""
from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import logging
import os
import shutil
import sys
from collections.abc import Sequence

import duckdb
import pandas as pd
from batch_worker.schema import InputSchema
from batch_worker.storage import Location

from operators.kit.prep.outputs import (BATCHES_DIR, MANIFEST_FILE, PREPARED_FILE, QUARANTINE_FILE, PrepResult,
                                        _clear_outputs, _write_manifest)

log = logging.getLogger(__name__)

#: Prep's own code, every module of this package, and the schema rules it applies: a change to any of these
#: files changes every fingerprint.
_PREP_CODE = (*sorted(glob.glob(os.path.join(os.path.dirname(os.path.abspath(__file__)), "*.py"))),
              sys.modules[InputSchema.__module__].__file__)


def _fingerprint(source: Location, files: Sequence[str], schema: InputSchema, window: tuple[str, str] | None,
                 bucket_count: int, rows_per_batch: int | None, max_quarantined_share: float) -> str:
    """What decides a prepare's output: each input file's identity and version, and every setting."""
    if source.remote:
        listed = [(path, info.get("size"), info.get("ETag") or info.get("etag"), str(info.get("LastModified")))
                  for path, info in ((path, source.fs.info(path)) for path in files)]
    else:
        listed = [(path, stat.st_size, stat.st_mtime_ns, stat.st_ino, stat.st_dev)
                  for path, stat in ((path, os.stat(path)) for path in files)]
    code = hashlib.sha256()
    for path in _PREP_CODE:
        with open(path, "rb") as handle:
            code.update(handle.read())
    described = {"files": listed, "schema": repr(schema), "window": list(window) if window else None,
                 "bucket_count": bucket_count, "rows_per_batch": rows_per_batch,
                 "max_quarantined_share": max_quarantined_share, "code": code.hexdigest(),
                 "engine": "duckdb-" + duckdb.__version__}
    return hashlib.sha256(json.dumps(described, sort_keys=True, default=str).encode()).hexdigest()


class _PrepIndex:
    """`<root>/prep-index/<fingerprint>.json`: where under `root` a fingerprint was last prepared.

    An entry holds a path relative to `root`, read back only if it stays under `root`, so an entry
    cannot make prep copy from elsewhere.
    """

    FOLDER = "prep-index"

    def __init__(self, root: str, out: Location):
        self.root = Location(root.rstrip("/") if out.remote else os.path.abspath(root), out.fs, out.remote)

    def _entry(self, fingerprint: str) -> str:
        return self.root.join(self.FOLDER, f"{fingerprint}.json")

    def _relative(self, uri: str) -> str | None:
        prefix = self.root.uri.rstrip("/") + "/"
        relative = uri.removeprefix(prefix) if uri.startswith(prefix) else None
        if not relative or os.path.isabs(relative) or os.path.normpath(relative).split(os.sep)[0] == "..":
            return None
        return relative

    def record(self, fingerprint: str, out: Location) -> None:
        relative = self._relative(out.uri)
        if relative is not None:
            self.root.write_json(self._entry(fingerprint), {"out": relative})

    def copy_into(self, out: Location, fingerprint: str) -> PrepResult | None:
        """The earlier prepare of `fingerprint`, copied into `out`; None when there is none intact."""
        entry = self.root.read_many([self._entry(fingerprint)]).get(self._entry(fingerprint))
        try:
            relative = json.loads(entry)["out"] if entry else None
        except (ValueError, KeyError, TypeError):
            relative = None
        if not isinstance(relative, str) or self._relative(self.root.join(relative)) != relative:
            return None
        source = Location(self.root.join(relative), out.fs, out.remote)
        if source.uri == out.uri:
            return None
        found = _prepared_before(source, fingerprint)
        if found is None:
            return None
        earlier, manifest = found
        if not manifest["uri"].str.startswith(source.join("")).all():
            return None
        _clear_outputs(out)
        moved = {uri: out.uri + uri[len(source.uri):] for uri in manifest["uri"]}
        if earlier.quarantine_uri:
            moved[earlier.quarantine_uri] = out.join(QUARANTINE_FILE)
        for old, new in moved.items():
            _copy_file(out, old, new)
        manifest["uri"] = manifest["uri"].map(moved)
        _write_manifest(out, manifest)
        result = dataclasses.replace(earlier, out_uri=out.uri, manifest_uri=out.join(MANIFEST_FILE),
                                     quarantine_uri=out.join(QUARANTINE_FILE) if earlier.quarantine_uri else None)
        out.write_json(out.join(PREPARED_FILE), {"fingerprint": fingerprint, "result": result.to_dict()})
        log.info("prep: input and settings unchanged since %s was prepared: its batches (%d) copied, not recomputed",
                 source.uri, result.batches)
        return result


def _copy_file(out: Location, source: str, target: str) -> None:
    if out.remote:
        out.fs.copy(source, target)  # server-side on S3
        return
    os.makedirs(os.path.dirname(target), exist_ok=True)
    try:
        os.link(source, target)  # prep outputs are never written in place, so sharing the inode is safe
    except OSError:
        shutil.copyfile(source, target)


def _prepared_before(out: Location, fingerprint: str) -> tuple[PrepResult, pd.DataFrame] | None:
    """The result and manifest of an earlier prepare into `out` of the same fingerprint, when all it wrote is
    in place."""
    marker = out.read_many([out.join(PREPARED_FILE)]).get(out.join(PREPARED_FILE))
    if marker is None:
        return None
    try:
        recorded = json.loads(marker)
        if recorded["fingerprint"] != fingerprint:
            return None
        result = PrepResult(**recorded["result"])
    except (ValueError, KeyError, TypeError):
        return None  # an unreadable marker is no reuse: prepare again
    needed = [result.manifest_uri] + ([result.quarantine_uri] if result.quarantine_uri else [])
    if not all(out.fs.exists(path) for path in needed):
        return None
    with out.fs.open(result.manifest_uri, "rb") as handle:
        manifest = pd.read_parquet(handle)
    batches = set(manifest["uri"])
    present = {out.full(path) for path in out.fs.find(out.join(BATCHES_DIR))} if batches else set()
    if len(batches) != result.batches or not batches <= present:
        return None
    return result, manifest
