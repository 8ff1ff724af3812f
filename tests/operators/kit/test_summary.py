"""The progress `make demo` prints while a run goes: read from the run's own log (excerpts of real
`airflow dags test` logs of units_of_work under summary_logs/), task instances and done-markers."""
from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from operators.kit.summary import (DoneMarkers, LogProgress, LogTail, Progress, RunSnapshot, ShardProgress, follow,
                                   format_progress, main, process_running)

LOGS = Path(__file__).parent / "summary_logs"
REPO = Path(__file__).resolve().parents[3]


def log_lines(name: str, data_root: Path | str = "/data") -> list[str]:
    return (LOGS / name).read_text().replace("@DATA_ROOT@", str(data_root)).splitlines()


def fed(lines: list[str]) -> LogProgress:
    progress = LogProgress()
    for line in lines:
        progress.feed(line)
    return progress


def no_markers(worklists):
    raise AssertionError(f"a finished shard's batches are counted from its closing line, not from {worklists}")


def wait_until(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"no {what} within {timeout} s")


# --- the log --------------------------------------------------------------------------------------

def test_a_run_with_failed_batches_is_read_shard_by_shard_from_its_log():
    progress = fed(log_lines("run_with_failed_batches.log"))
    assert {name: (s.batches, s.cached, s.finished) for name, s in progress.shards.items()} == {
        "shard 0": (20, 0, (20, 0, 0)), "shard 1": (20, 0, (18, 0, 2)), "shard 2": (20, 0, (20, 0, 0))}
    for index, shard in enumerate(progress.shards.values()):
        assert len(shard.worklists) == 1
        assert shard.worklists[0].startswith("/data/runs/units_of_work/manual__2026-11-21T19_13_50")
        assert shard.worklists[0].endswith(".json") and f"/run_shard-shard{index}-try1-" in shard.worklists[0]
    assert progress.batches(no_markers) == (58, 0, 2)


def test_a_cached_run_submits_nothing_and_counts_every_batch_cached():
    progress = fed(log_lines("cached_run.log"))
    assert {name: (s.batches, s.cached, s.worklists, s.finished) for name, s in progress.shards.items()} == {
        f"shard {i}": (20, 20, [], (0, 20, 0)) for i in range(3)}
    assert progress.batches(no_markers) == (60, 60, 0)


def test_a_running_shard_counts_its_cached_batches_and_the_done_markers_of_its_worklist(tmp_path):
    lines = log_lines("run_with_failed_batches.log", tmp_path)
    # the log as it stood while shard 1's job ran: shard 0 closed, shard 1 submitted
    submitted = [i for i, line in enumerate(lines) if "Submitting one array job" in line]
    progress = fed(lines[:submitted[1] + 1])
    assert progress.shards["shard 0"].finished == (20, 0, 0) and progress.shards["shard 1"].finished is None
    keys = [f"{i:032x}" for i in range(20)]
    worklist = Path(progress.shards["shard 1"].worklists[0])
    worklist.parent.mkdir(parents=True)
    worklist.write_text(json.dumps({"format": 1, "workload": "noop", "output_root": str(tmp_path / "outputs/noop"),
                                    "items": [{"batch_id": 20 + i, "key": key} for i, key in enumerate(keys)]}))

    def marker(key: str, body: dict | str) -> None:
        folder = tmp_path / "outputs/noop" / key
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "_DONE.json").write_text(body if isinstance(body, str) else json.dumps(body))

    for key in keys[:7]:
        marker(key, {"status": "done", "key": key, "batch_id": 0})
    marker(keys[7], {"status": "done", "key": keys[0]})  # another batch's marker
    marker(keys[8], '{"status": "do')  # a marker still being written
    markers = DoneMarkers()
    assert progress.batches(markers.count) == (27, 0, 0)

    # a worklist is read once, and markers found stay found
    worklist.unlink()
    for key in keys[7:10]:
        marker(key, {"status": "done", "key": key})
    assert progress.batches(markers.count) == (30, 0, 0)
    assert markers.count([str(worklist)]) == 10


def test_a_retried_shard_counts_as_cached_only_what_was_done_before_its_first_try():
    lines = log_lines("run_with_failed_batches.log")
    started = next(line for line in lines if "shard 1: batches 20-39: 20 batches, 0 done" in line)
    submitted = next(line for line in lines if "Submitting" in line and "-shard1-" in line)
    retry_started = started.replace("20 batches, 0 done", "20 batches, 12 done").replace("20 to compute", "8 to compute")
    retry_submitted = submitted.replace("for 20 pending", "for 8 pending").replace("-try1-", "-try2-")
    progress = fed([started.replace("0 done", "5 done"), submitted, retry_started, retry_submitted])
    shard = progress.shards["shard 1"]
    assert shard.cached == 5 and [("-try1-" in w, "-try2-" in w) for w in shard.worklists] == [(True, False),
                                                                                                  (False, True)]
    assert progress.batches(lambda worklists: 7 if len(worklists) == 2 else 0) == (12, 5, 0)


def test_lines_of_workers_and_task_results_are_not_taken_for_shard_lines():
    lines = [line for line in log_lines("run_with_failed_batches.log") if " | " in line or "shard(s)" in line]
    assert lines
    assert fed(lines).shards == {}
    assert fed(["Done. Returned value was: [{'shard': {'index': 0, 'label': 'shard 0: batches 0-19', 'start': 0}}]"]
               ).shards == {}


def test_the_log_is_read_in_complete_lines(tmp_path):
    path = tmp_path / "run.log"
    tail = LogTail(path)
    assert tail.new_lines() == []
    path.write_bytes(b"first line\nsecond ")
    assert tail.new_lines() == ["first line"]
    with open(path, "ab") as handle:
        handle.write(b"half\n\xffthird\n")
    assert tail.new_lines() == ["second half", "\ufffdthird"]
    assert tail.new_lines() == []


# --- the line ----------------------------------------------------------------------------------------

def test_the_line_shows_tasks_running_mapped_instances_batches_and_quarantined_rows():
    tasks = [("dataset", -1, "success"), ("prepare", -1, "success"), ("plan", -1, "success"),
             ("run_shard", 0, "success"), ("run_shard", 1, "running"), ("run_shard", 2, None), ("collect", -1, None)]
    progress = Progress(tasks=tasks, batches_total=3000, batches_done=1200, batches_cached=400, rows_quarantined=2750)
    assert format_progress(progress) == ("tasks 4/7 done, running run_shard [2 of 3] | batches 1,200/3,000 done "
                                         "(400 cached) | 2,750 rows quarantined")


def test_the_line_names_failed_tasks_and_batches_and_tasks_waiting_to_retry():
    tasks = [("prepare", -1, "success"), ("run_shard", 0, "failed"), ("run_shard", 1, "up_for_retry"),
             ("summary", -1, "upstream_failed")]
    progress = Progress(tasks=tasks, batches_total=60, batches_done=58, batches_failed=2, rows_quarantined=0)
    assert format_progress(progress) == "tasks 3/4 done (2 failed), to retry run_shard | batches 58/60 done (2 failed)"


def test_the_line_before_anything_is_known():
    assert format_progress(Progress()) == ""
    assert format_progress(Progress(tasks=[("prepare", -1, "running"), ("plan", -1, None)])) == \
        "tasks 0/2 done, running prepare"
    assert format_progress(Progress(batches_total=60)) == "batches 0/60 done"


# --- following a run ------------------------------------------------------------------------------------

class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def dag_run():
    """A process standing in for `airflow dags test`: it runs until its stdin is closed."""
    proc = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    yield proc
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=30)


def start_following(log: Path, pid: int, out: io.StringIO, state: dict) -> threading.Thread:
    def snapshot(dag_id, since):
        assert (dag_id, since) == ("units_of_work", 123.0)
        return RunSnapshot("manual__1", list(state["tasks"]), state.get("prepared")) if state.get("tasks") else None

    thread = threading.Thread(target=follow, args=("units_of_work", log, pid),
                              kwargs={"since": 123.0, "interval": 0.05, "out": out, "snapshot": snapshot}, daemon=True)
    thread.start()
    return thread


def test_following_prints_a_plain_line_on_each_change_and_a_last_one_when_the_run_ends(tmp_path, dag_run):
    log = tmp_path / "demo.log"
    lines = log_lines("cached_run.log", tmp_path)
    out = io.StringIO()
    state: dict = {}
    thread = start_following(log, dag_run.pid, out, state)
    wait_until(lambda: "starting units_of_work" in out.getvalue(), 30, "line before the run exists")
    state["tasks"] = [("prepare", -1, "running"), ("plan", -1, None), ("run_shard", -1, None), ("summary", -1, None)]
    wait_until(lambda: "running prepare" in out.getvalue(), 30, "line naming the running task")
    state["prepared"] = {"batches": 60, "rows_quarantined": 3}
    state["tasks"] = [("prepare", -1, "success"), ("plan", -1, "success"), ("run_shard", 0, "running"),
                      ("run_shard", 1, None), ("run_shard", 2, None), ("summary", -1, None)]
    first_shard = next(i for i, line in enumerate(lines) if "shard 0: batches 0-19: 20 batches:" in line)
    with open(log, "a") as handle:
        handle.write("\n".join(lines[:first_shard + 1]) + "\n")
    wait_until(lambda: "batches 20/60 done (20 cached)" in out.getvalue(), 30, "line with the first shard's batches")
    time.sleep(0.3)  # several intervals without a change
    with open(log, "a") as handle:
        handle.write("\n".join(lines[first_shard + 1:]) + "\n")
    state["tasks"] = [(task, index, "success") for task, index, _ in state["tasks"]]
    dag_run.stdin.close()
    thread.join(timeout=30)
    assert not thread.is_alive(), "following did not end with the run"
    printed = out.getvalue()
    assert "\r" not in printed and printed.endswith("\n")
    shown = printed.splitlines()
    assert all(line.startswith("[") and "s] " in line for line in shown), shown
    texts = [line.split("s] ", 1)[1] for line in shown]
    assert all(a != b for a, b in zip(texts, texts[1:])), texts
    assert texts[0] == "starting units_of_work"
    assert texts[-1] == "tasks 6/6 done | batches 60/60 done (60 cached) | 3 rows quarantined"


def test_on_a_terminal_the_line_is_rewritten_in_place_and_ended(tmp_path, dag_run):
    out = Terminal()
    state = {"tasks": [("prepare", -1, "running")]}
    thread = start_following(tmp_path / "demo.log", dag_run.pid, out, state)
    wait_until(lambda: out.getvalue().count("\r") >= 3, 30, "three rewrites")
    dag_run.stdin.close()
    thread.join(timeout=30)
    assert not thread.is_alive()
    printed = out.getvalue()
    assert printed.startswith("\r[") and printed.endswith("\x1b[K\n") and printed.count("\n") == 1
    assert "tasks 0/1 done, running prepare" in printed


def test_a_process_that_exited_counts_as_ended_before_it_is_waited_for():
    proc = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        assert process_running(proc.pid)
        proc.stdin.close()
        wait_until(lambda: not process_running(proc.pid), 30, "end of the process (a zombie until waited for)")
        assert Path(f"/proc/{proc.pid}").exists()
    finally:
        proc.wait(timeout=30)
    assert not process_running(proc.pid)


def test_following_needs_the_process_of_the_run(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["units_of_work", "--follow", "demo.log"])
    assert exit_.value.code == 2
    assert "--follow needs --pid" in capsys.readouterr().err


def test_the_follower_stops_quietly_on_sigterm(tmp_path, dag_run, airflow_db):
    """As `make demo` stops it on Ctrl-C or SIGTERM: at once, with its line ended and no traceback."""
    out = tmp_path / "progress.out"
    with open(out, "wb") as handle:
        follower = subprocess.Popen(
            [sys.executable, "-m", "operators.kit.summary", "units_of_work", "--follow", str(tmp_path / "demo.log"),
             "--pid", str(dag_run.pid), "--since", str(time.time()), "--interval", "0.1"],
            cwd=REPO, stdout=handle, stderr=subprocess.STDOUT, env=os.environ)
    try:
        wait_until(lambda: "starting units_of_work" in out.read_text(), 120, "first progress line")
        follower.send_signal(signal.SIGTERM)
        assert follower.wait(timeout=30) == 0
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait(timeout=30)
    printed = out.read_text()
    assert "Traceback" not in printed and "progress: cannot read" not in printed, printed
    assert printed.endswith("starting units_of_work\n"), printed
    assert dag_run.poll() is None, "the follower must never stop the run it follows"


def test_shard_progress_without_a_closing_line_counts_only_its_cached_batches_and_markers():
    shard = ShardProgress(batches=20, cached=4)
    progress = LogProgress()
    progress.shards["shard 0"] = shard
    assert progress.batches(lambda worklists: pytest.fail("no worklist yet")) == (4, 4, 0)


# --- the first error ------------------------------------------------------------------------------------

def test_the_first_error_is_the_failing_tasks_whole_exception_not_its_first_line(tmp_path):
    """`make demo` prints it: prep's refusal puts its reasons, advice and quarantine path after its first line."""
    from operators.kit.summary import first_error

    log = tmp_path / "run.log"
    log.write_text("\n".join(log_lines("prepare_refused.log", tmp_path)) + "\n")
    error = first_error(log)
    assert error.splitlines() == [
        f"operators.kit.prep.PrepError: 10 of 30 rows of {tmp_path}/bad.csv were quarantined (33.3%), more than "
        "max_quarantined_share=0.1:",
        f"  non_numeric:seq: 10 (first: {tmp_path}/bad.csv); write numbers (a dot for decimals, no units or "
        "thousands separators)",
        "Fix the input, or raise the run parameter max_quarantined_share (0..1) if this share of bad rows is "
        f"expected. The quarantined rows are in {tmp_path}/runs/units_of_work/manual__2026-12-06T12_45_26.654708"
        "_00_00~2f5f8d9a418b49ef/prep/quarantine.parquet with their reason, file and line."]


def test_a_chained_exception_gives_the_last_one_and_a_huge_one_is_cut_saying_so(tmp_path):
    from operators.kit.notify import ERROR_CHARS
    from operators.kit.summary import first_error

    log = tmp_path / "run.log"
    log.write_text(
        "2026-12-06T12:45:38.154977Z [error    ] Task failed with exception     [task] loc=task_runner.py:1676\n"
        "Traceback (most recent call last):\n"
        '  File "/repo/operators/kit/pipeline.py", line 10, in prepare\n'
        "    raise KeyError(name)\n"
        "KeyError: 'x'\n\n"
        "The above exception was the direct cause of the following exception:\n\n"
        "Traceback (most recent call last):\n"
        '  File "/repo/operators/kit/pipeline.py", line 12, in prepare\n'
        "    raise ValueError(text) from err\n"
        "        ^^^^^^^^^^^^^^^^^^^^^^^^^^\n"
        "ValueError: the first line\n"
        "    an indented second line\n"
        "the last line\n"
        "2026-12-06T12:45:38.157904Z [info     ] ::group::Post Execute          [task] loc=task_runner.py:1677\n")
    assert first_error(log) == "ValueError: the first line\n    an indented second line\nthe last line"
    log.write_text("Traceback (most recent call last):\n"
                   '  File "/repo/x.py", line 1, in f\n'
                   "    g()\n"
                   f"RuntimeError: {'y' * (ERROR_CHARS * 2)}\n")
    error = first_error(log)
    assert error.startswith("RuntimeError: yyy") and error.endswith("more characters cut; the task log has the "
                                                                    "whole message]")
    assert len(error) < ERROR_CHARS + 200
    log.write_text("2026-12-06T12:45:38Z [error    ] ValueError: no traceback here\n")
    assert first_error(log) == "2026-12-06T12:45:38Z [error    ] ValueError: no traceback here"
