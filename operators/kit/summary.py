"""What a DAG run is doing while it runs, and what the latest run did.

    python -m operators.kit.summary DAG_ID [--log FILE]
    python -m operators.kit.summary DAG_ID --follow LOG --pid PID [--since EPOCH] [--interval SECONDS] [--report]

The first form prints the latest run's state, its tasks, how long each took and the `summary`/`notify`
task's result, and exits 1 when the run did not succeed, naming the failed tasks and the first error
from the log.

The second form (`make demo` runs it beside `airflow dags test`) prints a progress line every few
seconds until process PID ends, then one last line (and, with --report, what the first form prints):

    [ 34s] tasks 4/8 done, running run_shard [2 of 3] | batches 1,200/3,000 done (400 cached) | 2,750 rows quarantined

Every number is one the run recorded, none is estimated:
- tasks: the run's task instances in the metadata DB (the newest run created at or after --since);
- batches in all and rows quarantined: the result of the run's `prepare` task;
- batches done, per shard: the house operator's first "N batches, D done" line (D were done before the
  shard submitted anything: cached), then the done-markers under the output root for the batches of
  the worklists it submitted, until its closing "S succeeded, C cached, F failed" line settles it.

On a terminal the line is rewritten in place; otherwise a plain line is printed when it changed.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, TextIO

#: The task whose result is a DAG's run summary, by convention.
SUMMARY_TASKS = ("summary", "notify")
#: The task whose result counts the run's batches and quarantined rows (operators.kit.prep's PrepResult).
PREPARE_TASK = "prepare"
FINISHED_STATES = ("success", "failed", "skipped", "upstream_failed", "removed")
FAILED_STATES = ("failed", "upstream_failed")
RUNNING_STATES = ("queued", "running", "deferred", "restarting")


# --- the latest run ---------------------------------------------------------------------------------

def latest_run_report(dag_id: str) -> tuple[str, list[str], dict | None]:
    from airflow.models.dagrun import DagRun
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        run = session.scalars(select(DagRun).where(DagRun.dag_id == dag_id).order_by(DagRun.id.desc()).limit(1)).first()
        if run is None:
            return "missing", [], None
        tis = session.scalars(select(TaskInstance).where(TaskInstance.dag_id == dag_id, TaskInstance.run_id == run.run_id)).all()
        by_task: dict[str, Counter] = {}
        for ti in tis:
            by_task.setdefault(ti.task_id, Counter())[str(ti.state)] += 1
        lines = [f"  {task}: " + ", ".join(f"{n} {state}" for state, n in sorted(states.items()))
                 for task, states in by_task.items()]
        summary = None
        for task_id in SUMMARY_TASKS:
            summary = xcom_value(dag_id, run.run_id, task_id)
            if summary is not None:
                break
        return str(run.state), lines, summary


def latest_run_id(dag_id: str) -> str | None:
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        return session.scalars(select(DagRun.run_id).where(DagRun.dag_id == dag_id)
                               .order_by(DagRun.id.desc()).limit(1)).first()


def xcom_value(dag_id: str, run_id: str, task_id: str, key: str = "return_value"):
    """One XCom value of a run, decoded (None when absent)."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        value = session.scalars(select(XComModel.value).where(
            XComModel.dag_id == dag_id, XComModel.run_id == run_id, XComModel.task_id == task_id,
            XComModel.key == key)).first()
    return json.loads(value) if isinstance(value, str) else value


def task_rows(dag_id: str, run_id: str) -> list[tuple]:
    """(task_id, start_date, end_date) of each task instance of a run."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        return [tuple(row) for row in session.execute(
            select(TaskInstance.task_id, TaskInstance.start_date, TaskInstance.end_date).where(
                TaskInstance.dag_id == dag_id, TaskInstance.run_id == run_id)).all()]


def task_times(dag_id: str, run_id: str) -> list[tuple[str, int, float]]:
    """(task_id, instances, seconds) of a run's finished task instances (`task_spans`)."""
    return task_spans(task_rows(dag_id, run_id))


def task_windows(rows) -> dict[str, tuple]:
    """{task_id: (first start, last end, finished instances)} from (task_id, start, end) rows, in the order the
    tasks started; unfinished instances are left out."""
    spans: dict[str, list] = {}
    for task_id, start, end in rows:
        if start is None or end is None:
            continue
        span = spans.setdefault(task_id, [start, end, 0])
        span[0], span[1], span[2] = min(span[0], start), max(span[1], end), span[2] + 1
    return {task_id: tuple(span) for task_id, span in sorted(spans.items(), key=lambda item: item[1][0])}


def task_spans(rows) -> list[tuple[str, int, float]]:
    """(task_id, instances, seconds) from (task_id, start, end) rows, in the order the tasks started.

    A task's seconds span its first instance's start to its last one's end, so the mapped instances of
    a task count once however they overlap; unfinished instances are left out.
    """
    ordered = task_windows(rows).items()
    return [(task_id, n, (end - start).total_seconds()) for task_id, (start, end, n) in ordered]


def format_task_times(times: list[tuple[str, int, float]]) -> str:
    return "\n".join(f"  {task_id:<16} {seconds:7.2f} s" + (f" ({n} instances)" if n > 1 else "")
                     for task_id, n, seconds in times)


#: A line that starts a new record of the task log (`2026-02-16T10:00:00.000000Z [error ...`): a traceback ends there.
_LOG_RECORD = re.compile(r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}")


def first_error(log: Path) -> str | None:
    """The first task error in a run's log, whole: the exception that failed the first failing task, every line of
    its message (prep's reasons, advice and quarantine path follow its first line), bounded like a notification's.
    Without a traceback, the first line that names an error."""
    from operators.kit.notify import whole_text

    if not log.exists():
        return None
    lines = log.read_text(errors="replace").splitlines()
    for start, line in enumerate(lines):
        if line.startswith("Traceback (most recent call last):"):
            block = []
            for following in lines[start + 1:]:
                if _LOG_RECORD.match(following):
                    break
                block.append(following)
            message = final_exception(block)
            if message:
                return whole_text(message)
    for line in lines:
        if "Exception:" in line or "Error:" in line:
            return whole_text(line)
    return None


def final_exception(block: list[str]) -> str:
    """The last exception of a traceback (its lines after "Traceback ..."): the `Type: message` line and every line
    after it. The frames before it are `  File "..."` lines, each followed by its code lines indented further; a
    chained exception's own traceback comes first, so the last frame's end is where the final message starts."""
    end = 0
    for index, line in enumerate(block):
        if line.startswith('  File "'):
            end = index + 1
            while end < len(block) and block[end].startswith("    "):
                end += 1
    return "\n".join(block[end:]).strip()


# --- progress from the task log -----------------------------------------------------------------------

# The house operator's lines (operators.kit.batch.UnitsOfWorkOperator); a shard is named by "shard <index>".
SHARD_STARTED = re.compile(r"(?P<shard>shard \d+): batches [^:]*: (?P<batches>\d+) batches, (?P<done>\d+) done "
                           r"\(cached or computed\)")
SHARD_SUBMITTED = re.compile(r"Submitting one (?:array )?job for \d+ pending batches: .*; worklist (?P<uri>\S.*?\.json)"
                             r"(?= \[|\s*$)")
SHARD_FINISHED = re.compile(r"(?P<shard>shard \d+): batches [^:]*: (?P<batches>\d+) batches: (?P<succeeded>\d+) "
                            r"succeeded, (?P<cached>\d+) cached, (?P<failed>\d+) failed")


@dataclass
class ShardProgress:
    batches: int
    #: Done before the shard's first submission: cached by earlier runs.
    cached: int
    worklists: list[str] = field(default_factory=list)
    #: (succeeded, cached, failed) from the shard's closing line.
    finished: tuple[int, int, int] | None = None


class LogProgress:
    """The shards' progress as the task log tells it, fed line by line in the order written.

    `airflow dags test` runs one task at a time, so a worklist belongs to the shard whose line came last.
    """

    def __init__(self) -> None:
        self.shards: dict[str, ShardProgress] = {}
        self._current: str | None = None

    def feed(self, line: str) -> None:
        if match := SHARD_STARTED.search(line):
            name = match["shard"]
            # A retry's line counts what the first try computed as done too: only the first line says what was cached.
            if name not in self.shards:
                self.shards[name] = ShardProgress(batches=int(match["batches"]), cached=int(match["done"]))
            self._current = name
        elif (match := SHARD_SUBMITTED.search(line)) and self._current is not None:
            self.shards[self._current].worklists.append(match["uri"])
        elif match := SHARD_FINISHED.search(line):
            # A shard with every batch done closes without a first line.
            shard = self.shards.setdefault(match["shard"], ShardProgress(batches=int(match["batches"]),
                                                                         cached=int(match["cached"])))
            shard.finished = (int(match["succeeded"]), int(match["cached"]), int(match["failed"]))

    def batches(self, computed: Callable[[list[str]], int]) -> tuple[int, int, int]:
        """(done, cached, failed) over the shards seen so far; `computed(worklists)` counts the batches of
        those worklists that have a done-marker."""
        done = cached = failed = 0
        for shard in self.shards.values():
            if shard.finished is not None:
                succeeded, shard_cached, shard_failed = shard.finished
                done += succeeded + shard_cached
                cached += shard_cached
                failed += shard_failed
            else:
                done += shard.cached + (computed(shard.worklists) if shard.worklists else 0)
                cached += shard.cached
        return done, cached, failed


class LogTail:
    """The complete lines appended to a file since the last call."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.partial = b""

    def new_lines(self) -> list[str]:
        try:
            with open(self.path, "rb") as handle:
                handle.seek(self.offset)
                data = handle.read()
        except FileNotFoundError:
            return []
        self.offset += len(data)
        *lines, self.partial = (self.partial + data).split(b"\n")
        return [line.decode(errors="replace") for line in lines]


class DoneMarkers:
    """Counts the batches of worklists that have a valid done-marker; a worklist is read once, a marker
    found stays found (a run never removes one)."""

    def __init__(self) -> None:
        self.keys: dict[str, list[str]] = {}
        self.outputs: dict[str, object] = {}
        self.done: set[str] = set()

    def count(self, worklists: list[str]) -> int:
        from batch_worker.cache import DONE_FILE, is_valid_done

        keys: set[str] = set()
        for uri in worklists:
            if uri not in self.keys:
                worklist = location(uri).read_json()
                self.outputs[uri] = location(worklist["output_root"])
                self.keys[uri] = [item["key"] for item in worklist["items"]]
            out = self.outputs[uri]
            pending = [key for key in self.keys[uri] if key not in self.done]
            found = out.read_many([out.join(key, DONE_FILE) for key in pending])
            self.done.update(key for key in pending if is_valid_done(found.get(out.join(key, DONE_FILE)), key))
            keys.update(self.keys[uri])
        return len(keys & self.done)


def location(uri: str):
    if uri.startswith(("s3://", "s3a://")):
        from operators.kit import engine  # the AWS connection's endpoint and keys

        return engine.location(uri)
    from batch_worker.storage import Location

    return Location.parse(uri)


# --- progress from the metadata DB --------------------------------------------------------------------

@dataclass
class RunSnapshot:
    run_id: str
    #: (task_id, map_index, state) of every task instance; map_index -1 for an unmapped task.
    tasks: list[tuple[str, int, str | None]]
    #: The `prepare` task's result once it finished.
    prepared: dict | None


def run_snapshot(dag_id: str, since: float | None = None) -> RunSnapshot | None:
    """The newest run of `dag_id` created at or after `since` (epoch seconds); None before it exists."""
    from airflow.models.dagrun import DagRun
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        query = select(DagRun.run_id).where(DagRun.dag_id == dag_id)
        if since is not None:
            query = query.where(DagRun.run_after >= datetime.fromtimestamp(since, timezone.utc))
        run_id = session.scalars(query.order_by(DagRun.id.desc()).limit(1)).first()
        if run_id is None:
            return None
        rows = session.execute(select(TaskInstance.task_id, TaskInstance.map_index, TaskInstance.state).where(
            TaskInstance.dag_id == dag_id, TaskInstance.run_id == run_id)).all()
    tasks = [(task_id, map_index, None if state is None else str(getattr(state, "value", state)))
             for task_id, map_index, state in rows]
    return RunSnapshot(run_id, tasks, xcom_value(dag_id, run_id, PREPARE_TASK))


# --- the line -----------------------------------------------------------------------------------------

@dataclass
class Progress:
    tasks: list[tuple[str, int, str | None]] | None = None
    batches_total: int | None = None
    batches_done: int = 0
    batches_cached: int = 0
    batches_failed: int = 0
    rows_quarantined: int | None = None


def tasks_part(tasks: list[tuple[str, int, str | None]]) -> str:
    done = sum(1 for *_, state in tasks if state in FINISHED_STATES)
    failed = sum(1 for *_, state in tasks if state in FAILED_STATES)
    text = f"tasks {done}/{len(tasks)} done" + (f" ({failed} failed)" if failed else "")
    mapped = Counter(task_id for task_id, map_index, _ in tasks if map_index >= 0)
    running = [f"{task_id} [{map_index + 1} of {mapped[task_id]}]" if map_index >= 0 else task_id
               for task_id, map_index, state in sorted(tasks, key=lambda t: (t[0], t[1])) if state in RUNNING_STATES]
    retrying = sorted({task_id for task_id, _, state in tasks if state == "up_for_retry"})
    if running:
        text += ", running " + ", ".join(running)
    if retrying:
        text += ", to retry " + ", ".join(retrying)
    return text


def format_progress(progress: Progress) -> str:
    """One line of progress, without the elapsed time; empty before the run exists."""
    parts = []
    if progress.tasks:
        parts.append(tasks_part(progress.tasks))
    if progress.batches_total is not None or progress.batches_done:
        total = f"/{progress.batches_total:,}" if progress.batches_total is not None else ""
        notes = [f"{n:,} {what}" for n, what in ((progress.batches_cached, "cached"), (progress.batches_failed, "failed"))
                 if n]
        parts.append(f"batches {progress.batches_done:,}{total} done" + (f" ({', '.join(notes)})" if notes else ""))
    if progress.rows_quarantined:
        parts.append(f"{progress.rows_quarantined:,} rows quarantined")
    return " | ".join(parts)


def current_progress(snapshot: RunSnapshot | None, log: LogProgress, computed: Callable[[list[str]], int]) -> Progress:
    done, cached, failed = log.batches(computed)
    prepared = (snapshot.prepared if snapshot is not None else None) or {}
    return Progress(tasks=snapshot.tasks if snapshot is not None else None,
                    batches_total=prepared.get("batches") if isinstance(prepared.get("batches"), int) else None,
                    batches_done=done, batches_cached=cached, batches_failed=failed,
                    rows_quarantined=prepared.get("rows_quarantined"))


# --- following a run ----------------------------------------------------------------------------------

def process_running(pid: int) -> bool:
    """Whether process `pid` exists and has not exited (an exited child not yet waited for is a zombie)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[0] != "Z"


def follow(dag_id: str, log_path: Path, pid: int, *, since: float | None = None, interval: float = 3.0,
           out: TextIO = sys.stdout, snapshot: Callable[[str, float | None], RunSnapshot | None] = run_snapshot) -> None:
    """Print progress lines until process `pid` ends (or this process's parent does), then a last one."""
    started = time.monotonic()
    parent = os.getppid()
    tail, log, markers = LogTail(log_path), LogProgress(), DoneMarkers()
    live = out.isatty()
    latest: RunSnapshot | None = None
    shown: str | None = None
    warned: set[str] = set()

    def warn_once(what: str, error: Exception) -> None:
        if what not in warned:
            warned.add(what)
            print(f"progress: cannot read {what} ({type(error).__name__}: {error}); showing what is known",
                  file=sys.stderr, flush=True)

    def computed(worklists: list[str]) -> int:
        try:
            return markers.count(worklists)
        except Exception as error:  # noqa: BLE001 - progress is advisory; the run's own result decides
            warn_once("the done-markers", error)
            return 0

    try:
        while True:
            ending = not process_running(pid) or os.getppid() != parent
            for line in tail.new_lines():
                log.feed(line)
            try:
                latest = snapshot(dag_id, since) or latest
            except Exception as error:  # noqa: BLE001 - e.g. the SQLite DB locked by the run for a moment
                warn_once("the run's task instances", error)
            text = format_progress(current_progress(latest, log, computed)) or f"starting {dag_id}"
            stamp = f"[{time.monotonic() - started:3.0f}s] "
            if live:
                out.write("\r" + stamp + text + "\x1b[K")
            elif text != shown:
                out.write(stamp + text + "\n")
            out.flush()
            shown = text
            if ending:
                return
            deadline = time.monotonic() + interval
            while time.monotonic() < deadline and process_running(pid):
                time.sleep(min(0.25, interval))
    finally:
        if live and shown is not None:
            out.write("\n")
            out.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m operators.kit.summary")
    parser.add_argument("dag_id")
    parser.add_argument("--log", type=Path, help="the run's log, for the first error of a failed run")
    parser.add_argument("--follow", type=Path, metavar="LOG", help="print progress from this log while --pid runs")
    parser.add_argument("--pid", type=int, help="with --follow: the process running the DAG")
    parser.add_argument("--since", type=float, help="with --follow: the run was created at or after this epoch time")
    parser.add_argument("--interval", type=float, default=3.0, help="with --follow: seconds between lines")
    parser.add_argument("--report", action="store_true",
                        help="with --follow: when the run has ended, print its report as the first form does (one "
                             "interpreter and one Airflow import for both)")
    args = parser.parse_args(argv)
    if args.follow is not None:
        if args.pid is None:
            parser.error("--follow needs --pid: the process running the DAG, so that following ends with it")
        if not args.interval > 0:
            parser.error(f"--interval must be above 0, got {args.interval}")
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        follow(args.dag_id, args.follow, args.pid, since=args.since, interval=args.interval)
        return report(args.dag_id, args.log) if args.report else 0
    return report(args.dag_id, args.log)


def report(dag_id: str, log: Path | None) -> int:
    """Print the latest run's state, tasks, task times and summary; 1 when it did not succeed."""
    state, lines, summary = latest_run_report(dag_id)
    print(f"{dag_id}: latest run {state}")
    print("\n".join(lines))
    times = task_times(dag_id, latest_run_id(dag_id) or "")
    if times:
        print("task times:")
        print(format_task_times(times))
    if summary is not None:
        print("summary:")
        print(json.dumps(summary, indent=2, default=str))
    if state != "success":
        error = first_error(log) if log else None
        if error:
            print(f"first error: {error}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
