"""The worker runtime: what every AWS Batch job (or array child) of the engine runs.

    batch-worker <worklist URI> [--index N]
    batch-worker try <workload> <input file> [--params JSON] [--rows N]   (see `batch_worker.tryout`)

It reads the worklist (see `batch_worker.cache`), takes its slice by AWS_BATCH_JOB_ARRAY_INDEX (0
for a plain job), reads the slice's done- and failure-markers in one round, and for each batch in
the slice: skips it if it had a valid done-marker, else loads the batch, runs the registered
workload, checks its output against the workload's declared `output` schema, writes
`result.parquet`, then the done-marker (both atomically; the marker last), and removes an earlier
`_FAILED.json`. A batch that fails gets a `_FAILED.json` with its failure class and first error
line; the other batches of the slice still run. A child that cannot read the markers runs
nothing and exits by the failure's class (77 refused, 75 transient, 1 otherwise).

Small batches run in groups when the workload allows it (`Workload.combines_batches`): one call
of the workload over several consecutive batches of the slice, its output split back by unit
into each batch's own result and marker, exactly as if each had run alone. A group holds the rows
the workload got through in about GROUP_TARGET_S on its last call, so a per-call cost (pandas'
own, a model's load) is paid once per group while a group never holds much more work than that.
When a group's call fails, or its output cannot be split by unit, its batches run one by one, so
every failure still lands on its own batch; so do batches whose columns pandas types differently
(an int column with a null in one of them), so that each sees the types it would alone.

Exit codes tell AWS Batch's retry strategy what to do: `batch_worker.exit_codes` lists them and the failure
class of each.

When even `_FAILED.json` cannot be written, the child logs the record on a line starting with
`airbatch-failure` (see `batch_worker.cache.failure_line`), so the operator still reports the
child's own error rather than only its exit code.
"""
from __future__ import annotations

import argparse
import errno
import io
import logging
import os
import sys
import time
import traceback
from collections import Counter
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from batch_worker.cache import (DONE_FILE, FAILED_FILE, RESULT_FILE, WORKLIST_FORMAT, child_slice, failure_line,
                                is_valid_done, params_digest)
from batch_worker.exit_codes import (CONFIG_CLASS, EXIT_BAD_DATA, EXIT_ERROR, EXIT_NO_PERMISSION, EXIT_OK,
                                     EXIT_TRANSIENT, EXIT_USAGE)
from batch_worker.output import GroupNotSplit, checked_frame, group_units, output_names_unit, row_owners
from batch_worker.storage import Location
from batch_worker.workloads import BadData, TransientError, Workload, WorkloadError, get_workload

log = logging.getLogger("batch_worker")


class WorklistError(Exception):
    """The worklist cannot be used as it is."""


_TRANSIENT_NAMES = {"EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError", "ThrottlingException",
                    "SlowDown", "ServiceUnavailable", "RequestTimeout"}


_DENIED_CODES = {"AccessDenied", "AllAccessDisabled", "InvalidAccessKeyId", "SignatureDoesNotMatch",
                 "AccountProblem", "403"}
_DENIED_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS}


def failure_class(exc: BaseException) -> str:
    """bad_data | permission_denied | transient | error (see `batch_worker.exit_codes`)."""
    if isinstance(exc, BadData):
        return "bad_data"
    if isinstance(exc, PermissionError) or (isinstance(exc, OSError) and exc.errno in _DENIED_ERRNOS):
        return "permission_denied"
    if isinstance(exc, (TransientError, ConnectionError, TimeoutError)):
        return "transient"
    if any(cls.__name__ in _TRANSIENT_NAMES for cls in type(exc).__mro__):
        return "transient"
    response = getattr(exc, "response", None)
    code = str(response.get("Error", {}).get("Code")) if isinstance(response, dict) else None
    if code in _TRANSIENT_NAMES:
        return "transient"
    if code in _DENIED_CODES:
        return "permission_denied"
    return "error"


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:500]


def load_worklist(uri: str) -> dict[str, Any]:
    try:
        worklist = Location.parse(uri).read_json()
    except FileNotFoundError:
        raise WorklistError(f"worklist {uri} does not exist") from None
    except ValueError as exc:
        raise WorklistError(f"worklist {uri} is not valid JSON: {exc}") from None
    missing = [k for k in ("format", "workload", "workload_version", "params", "output_root",
                           "batches_per_child", "items") if k not in worklist]
    if missing:
        raise WorklistError(f"worklist {uri} lacks {', '.join(missing)}")
    if worklist["format"] != WORKLIST_FORMAT:
        raise WorklistError(f"worklist {uri} has format {worklist['format']}; this worker reads {WORKLIST_FORMAT}")
    return worklist


def resolve(worklist: dict[str, Any]) -> tuple[Workload, dict[str, Any]]:
    try:
        workload = get_workload(worklist["workload"])
    except WorkloadError as exc:
        raise WorklistError(str(exc)) from None
    if str(workload.version) != str(worklist["workload_version"]):
        raise WorklistError(
            f"workload {workload.name!r} here is version {workload.version}, but the worklist was planned for "
            f"version {worklist['workload_version']}: the worker image and the Airflow side run different code")
    try:
        return workload, workload.resolve_params(worklist["params"])
    except ValueError as exc:
        raise WorklistError(str(exc)) from None


#: Batches of fewer rows are decoded in the calling thread: for them Arrow's thread pool costs more than it saves.
THREADED_READ_ROWS = 50_000


def read_batch(uri: str) -> pd.DataFrame:
    """One batch file as a table. A batch is one Parquet file: read as such, without the dataset discovery
    `pd.read_parquet` does first, to the same frame. From S3 the object comes in one GET, not a HEAD and
    ranged reads."""
    location = Location.parse(uri)
    source = location.uri if not location.remote else pa.BufferReader(location.read_bytes())
    parquet = pq.ParquetFile(source, pre_buffer=False)
    threads = parquet.metadata.num_rows >= THREADED_READ_ROWS
    return parquet.read(use_threads=threads).to_pandas(use_threads=threads)


def table_bytes(table: pa.Table) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()


def parquet_bytes(frame: pd.DataFrame, schema: pa.Schema | None = None) -> bytes:
    return table_bytes(pa.Table.from_pandas(frame, schema=schema, preserve_index=False))


def job_identity() -> dict[str, str]:
    return {"job_id": os.environ.get("AWS_BATCH_JOB_ID", "local"),
            "attempt": os.environ.get("AWS_BATCH_JOB_ATTEMPT", "1")}


#: A group of small batches holds the rows the workload got through in about this many seconds on its
#: last call: long enough that a per-call cost is shared, short enough that a stopped child loses little.
GROUP_TARGET_S = 0.5
#: The most rows and batches one group holds, however fast the workload is (memory, and progress to see).
GROUP_MAX_ROWS = 50_000
GROUP_MAX_BATCHES = 1000


class GroupPace:
    """How many rows the next group may hold: what the workload's last call got through in GROUP_TARGET_S,
    and at least twice the last call's rows while calls take less than that (so a call whose cost is
    mostly fixed, a model's load, still grows into groups).

    Before any call it is 0, so the slice's first batch runs alone and measures the pace."""

    def __init__(self) -> None:
        self.rows = 0

    def record(self, rows: int, seconds: float) -> None:
        paced = int(rows * GROUP_TARGET_S / max(seconds, 1e-4))
        if seconds < GROUP_TARGET_S:  # a call's fixed cost does not grow with its rows: at least double
            paced = max(paced, 2 * rows)
        self.rows = min(GROUP_MAX_ROWS, paced)

    def next_group(self, pending: list[dict[str, Any]], start: int) -> list[dict[str, Any]]:
        """pending[start], and the batches after it that fit in the pace (each must say its `rows`)."""
        group = [pending[start]]
        rows = _rows(pending[start])
        for item in pending[start + 1:start + GROUP_MAX_BATCHES]:
            if rows is None or _rows(item) is None or rows + _rows(item) > self.rows:
                break
            group.append(item)
            rows += _rows(item)
        return group


def _rows(item: dict[str, Any]) -> int | None:
    """The batch's rows as its worklist item says (None when it does not, or says none: such a batch runs alone,
    so that the workload sees it as it would otherwise)."""
    rows = item.get("rows")
    return rows if isinstance(rows, int) and not isinstance(rows, bool) and rows > 0 else None


class SliceRunner:
    """Runs the batches of one child's slice; what they all share is worked out once, when the child starts.

    That includes the slice's done- and failure-markers, read in one round (one concurrent round on
    S3): a batch done by then is skipped, and a failure-marker is removed after a success only where
    one was found then (or locally, where a removal costs no more than a check). Batches are the
    house operator's pending ones, and each belongs to one child, so no marker of the slice appears
    meanwhile but those this child writes.
    """

    def __init__(self, worklist: dict[str, Any], workload: Workload, params: dict[str, Any],
                 items: list[dict[str, Any]]):
        self.workload = workload
        self.params = params
        self.out = Location.parse(worklist["output_root"])
        self.arrow_schema = workload.output.arrow_schema() if workload.output is not None else None
        self.identity = job_identity()
        self.marker_fields = {"workload": workload.name, "workload_version": str(workload.version),
                              "params_digest": params_digest(params), "result": RESULT_FILE, **self.identity,
                              "run": worklist.get("run", {})}
        markers = self.out.read_many([self.out.join(item["key"], name) for item in items
                                      for name in (DONE_FILE, FAILED_FILE)])
        self.done = {item["key"] for item in items
                     if is_valid_done(markers.get(self.out.join(item["key"], DONE_FILE)), item["key"])}
        self.failed_before = {item["key"] for item in items if self.out.join(item["key"], FAILED_FILE) in markers}
        self.unit_key = list(workload.schema.unit_key)
        self.grouping = output_names_unit(workload) and self._combines()
        self.pace = GroupPace()

    def _combines(self) -> bool:
        try:
            return bool(self.workload.combines_batches(self.params))
        except Exception as exc:  # the workload's own bug: its batches still run, one at a time
            log.warning("workload %s: combines_batches raised %s; its batches run one at a time",
                        self.workload.name, first_line(exc))
            return False

    def run_slice(self, items: list[dict[str, Any]]) -> Counter:
        """Run every batch of the slice (alone, or in groups when the workload allows it); count the outcomes."""
        outcomes: Counter = Counter()
        pending = []
        for item in items:
            if item["key"] in self.done:
                outcomes["cached"] += 1
            else:
                pending.append(item)
        start = 0
        while start < len(pending):
            group = self.pace.next_group(pending, start) if self.grouping else [pending[start]]
            start += len(group)
            if len(group) == 1:
                outcomes[self.run_batch(group[0])[0]] += 1
            else:
                outcomes.update(self.run_group(group))
        return outcomes

    def run_batch(self, item: dict[str, Any], batch: pd.DataFrame | None = None) -> tuple[str, str | None]:
        """Run one batch (`batch`: its rows when already read); return (outcome, error) with outcome
        done | cached | bad_data | transient | error."""
        key = item["key"]
        if key in self.done:
            return "cached", None
        workload = self.workload
        started = time.perf_counter()
        try:
            batch = read_batch(item["uri"]) if batch is None else batch
            called = time.perf_counter()
            result = workload.run(batch, self.params)
            self.pace.record(len(batch), time.perf_counter() - called)
            result = checked_frame(workload, result, f"workload {workload.name!r} batch {item['batch_id']}")
            self._write_done(item, table_bytes(self._table(result)), len(batch), len(result),
                             time.perf_counter() - started)
            return "done", None
        except Exception as exc:  # every failure is recorded and classified; the slice goes on
            return self._record_failure(item, exc)

    def run_group(self, group: list[dict[str, Any]]) -> list[str]:
        """Run the group's batches in one call of the workload and write each batch's own result and marker.

        When the call fails, or its output cannot be split by unit, the batches not yet written run one by
        one instead: a failure is then recorded on the batch it belongs to, and the others still succeed."""
        first, last = group[0]["batch_id"], group[-1]["batch_id"]
        written: list[str] = []
        try:
            started = time.perf_counter()
            frames = [read_batch(item["uri"]) for item in group]
            if any(not frame.dtypes.equals(frames[0].dtypes) for frame in frames[1:]):
                # pandas types a column by its values (an int column with a null is float): each batch is
                # to see the types it would alone
                log.info("batches %s..%s: their columns' types differ; running them one at a time", first, last)
                return [self.run_batch(item, frame)[0] for item, frame in zip(group, frames)]
            rows = [len(frame) for frame in frames]
            batch = pd.concat(frames, ignore_index=True)
            units = group_units(batch, self.unit_key, rows)  # before the call: it may change `batch`
            called = time.perf_counter()
            result = self.workload.run(batch, self.params)
            self.pace.record(sum(rows), time.perf_counter() - called)
            result = checked_frame(self.workload, result,
                                   f"workload {self.workload.name!r} batches {first}..{last} (run together)")
            owner = row_owners(units, result, self.unit_key)
            table = self._table(result)
            order = np.argsort(owner, kind="stable")
            bounds = np.concatenate(([0], np.cumsum(np.bincount(owner, minlength=len(group)))))
            seconds_per_row = (time.perf_counter() - started) / max(sum(rows), 1)
            for position, item in enumerate(group):
                part = table.take(order[bounds[position]:bounds[position + 1]])
                self._write_done(item, table_bytes(part), rows[position], part.num_rows,
                                 seconds_per_row * rows[position], group=len(group))
                written.append("done")
            return written
        except Exception as exc:  # run what is left alone: each failure is then its batch's own
            log.warning("batches %s..%s together: %s; running them one at a time", first, last, first_line(exc))
            alone = [self.run_batch(item)[0] for item in group[len(written):]]
            if isinstance(exc, GroupNotSplit) or all(outcome == "done" for outcome in alone):
                # the failure was the group's, not a batch's: the next groups would fail the same way
                log.warning("running the rest of the slice one batch at a time")
                self.grouping = False
            return written + alone

    def _table(self, result: pd.DataFrame) -> pa.Table:
        return pa.Table.from_pandas(result, schema=self.arrow_schema, preserve_index=False)

    def _write_done(self, item: dict[str, Any], result: bytes, rows_in: int, rows_out: int, seconds: float,
                    group: int = 1) -> None:
        """The batch's result, then its done-marker (the marker last), then no stale failure-marker."""
        key, out = item["key"], self.out
        out.write_bytes(out.join(key, RESULT_FILE), result)
        out.write_json(out.join(key, DONE_FILE), {
            "status": "done", "key": key, "batch_id": item["batch_id"], "content_hash": item.get("content_hash"),
            "rows_in": rows_in, "rows_out": rows_out, "units": item.get("units"),
            "seconds": round(seconds, 6), "finished_at": time.time(), **({"group": group} if group > 1 else {}),
            **self.marker_fields,
        })
        if key in self.failed_before or not out.remote:
            out.remove(out.join(key, FAILED_FILE))
        log.info("batch %s: %d rows -> %d rows in %.3f s%s (%s)", item["batch_id"], rows_in, rows_out, seconds,
                 f" (run with {group - 1} other batch(es))" if group > 1 else "", out.join(key))

    def _record_failure(self, item: dict[str, Any], exc: Exception) -> tuple[str, str]:
        kind = failure_class(exc)
        error = first_line(exc)
        log.error("batch %s failed (%s): %s", item["batch_id"], kind, error)
        if kind == "error":
            log.error("%s", traceback.format_exc().rstrip())
        record = {"status": "failed", "key": item["key"], "batch_id": item["batch_id"], "class": kind,
                  "error": error, "at": time.time(), **self.identity}
        try:
            self.out.write_json(self.out.join(item["key"], FAILED_FILE), record)
        except Exception as record_exc:  # the marker is missing either way, so the batch stays pending
            log.error("could not record the failure of batch %s: %s", item["batch_id"], first_line(record_exc))
            log.error("%s", failure_line(record))
        return kind, error


def exit_code(outcomes: Counter) -> int:
    if outcomes["transient"]:
        return EXIT_TRANSIENT
    if outcomes["error"]:
        return EXIT_ERROR
    if outcomes["permission_denied"]:
        return EXIT_NO_PERMISSION
    if outcomes["bad_data"]:
        return EXIT_BAD_DATA
    return EXIT_OK


def run(worklist_uri: str, index: int) -> int:
    try:
        worklist = load_worklist(worklist_uri)
        workload, params = resolve(worklist)
    except WorklistError as exc:
        log.error("cannot run: %s", exc)
        log.error("%s", failure_line({"class": CONFIG_CLASS, "error": f"cannot run: {exc}"[:500]}))
        return EXIT_USAGE
    except PermissionError as exc:
        log.error("%s", failure_line({"class": "permission_denied",
                                      "error": f"cannot read the worklist {worklist_uri}: {first_line(exc)}"}))
        return EXIT_NO_PERMISSION
    except (OSError, ConnectionError) as exc:
        log.error("cannot read the worklist %s: %s", worklist_uri, first_line(exc))
        return EXIT_TRANSIENT
    items = child_slice(worklist["items"], int(worklist["batches_per_child"]), index)
    if not items:
        log.warning("child %d has no batches (worklist holds %d)", index, len(worklist["items"]))
        return EXIT_OK
    log.info("child %d: %d batches (%s .. %s) of workload %s v%s", index, len(items), items[0]["batch_id"],
             items[-1]["batch_id"], workload.name, workload.version)
    started = time.perf_counter()
    try:
        runner = SliceRunner(worklist, workload, params, items)
    except Exception as exc:  # without the markers no batch can be run or skipped
        kind = failure_class(exc)
        error = f"cannot read the markers under {worklist['output_root']}: {first_line(exc)}"
        log.error("%s", error)
        if kind == "error":
            log.error("%s", traceback.format_exc().rstrip())
        log.error("%s", failure_line({"class": kind, "error": error[:500]}))
        return exit_code(Counter([kind]))
    outcomes = runner.run_slice(items)
    code = exit_code(outcomes)
    log.info("child %d finished in %.2f s: %s; exit %d", index, time.perf_counter() - started,
             ", ".join(f"{n} {k}" for k, n in sorted(outcomes.items())), code)
    return code


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["try"]:
        from batch_worker import tryout

        return tryout.main(argv[1:])
    parser = argparse.ArgumentParser(prog="batch-worker", description=__doc__.split("\n\n")[0])
    parser.add_argument("worklist", help="URI of the worklist JSON (a local path or s3://)")
    parser.add_argument("--index", type=int, default=None,
                        help="array index to run (default: AWS_BATCH_JOB_ARRAY_INDEX, 0 for a plain job)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stdout,
                        format="%(asctime)s %(levelname)s %(message)s")
    index = args.index if args.index is not None else int(os.environ.get("AWS_BATCH_JOB_ARRAY_INDEX", "0"))
    return run(args.worklist, index)


def console_main() -> None:
    """The `batch-worker` command: `main`, then an exit that skips the interpreter's teardown.

    Arrow's native thread pools can still be tearing down while the interpreter finalizes, and then
    the process aborts with "terminate called without an active exception" (SIGABRT, exit 134)
    after its work is done and recorded (apache/arrow#34314): Batch would count a finished child
    as lost. Everything the worker writes is closed before `main` returns, so after flushing the
    logs and the standard streams `os._exit` ends the process with `main`'s own code.
    """
    try:
        code = main()
    except SystemExit as exc:  # argparse's --help (0) and its usage errors (2)
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else EXIT_ERROR)
        if not isinstance(exc.code, (int, type(None))):
            print(exc.code, file=sys.stderr)
    except KeyboardInterrupt:
        code = 128 + 2
    except BaseException:  # noqa: BLE001 - a bug in the worker itself: show where, as Python would
        traceback.print_exc()
        code = EXIT_ERROR
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe or stream: nothing more can reach it
            pass
    os._exit(code)


if __name__ == "__main__":
    console_main()
