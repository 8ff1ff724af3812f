"""The worker runtime: slices, markers, idempotence and exit codes (run in-process and as the real CLI)."""
from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batch_worker import runtime
from batch_worker.cache import (DONE_FILE, FAILED_FILE, RESULT_FILE, cache_key, child_slice, children_needed,
                                params_digest)
from batch_worker.workloads import get_workload
from tests.localaws.test_batch import s3_data_root


def make_batches(tmp_path: Path, count: int = 4) -> list[dict]:
    items = []
    for batch_id in range(count):
        frame = pd.DataFrame({"unit_id": [f"u{batch_id}a", f"u{batch_id}b"], "seq": [0, 0],
                              "value": [1.0 + batch_id, 2.0]})
        path = tmp_path / "batches" / f"bucket={batch_id}" / "data_0.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        frame.to_parquet(path, index=False)
        content = f"content-{batch_id}"
        items.append({"batch_id": batch_id, "uri": str(path), "rows": 2, "units": 2, "content_hash": content,
                      "key": cache_key(content, "noop", "1", {"sleep_s": 0.0, "fail_units": [], "salt": ""})})
    return items


def write_worklist(tmp_path: Path, items: list[dict], per_child: int = 2, **changes) -> str:
    worklist = {"format": 1, "workload": "noop", "workload_version": "1",
                "params": {"sleep_s": 0.0, "fail_units": [], "salt": ""}, "output_root": str(tmp_path / "out"),
                "batches_per_child": per_child, "run": {"dag_id": "t"}, "items": items, **changes}
    path = tmp_path / f"worklist-{len(list(tmp_path.glob('worklist-*')))}.json"
    path.write_text(json.dumps(worklist))
    return str(path)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_each_child_runs_its_slice_and_writes_result_then_marker(tmp_path):
    items = make_batches(tmp_path, 5)
    uri = write_worklist(tmp_path, items, per_child=2)
    assert children_needed(5, 2) == 3
    assert runtime.run(uri, 1) == runtime.EXIT_OK
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == sorted(i["key"] for i in items[2:4])
    marker = json.loads((out / items[2]["key"] / DONE_FILE).read_text())
    assert marker["status"] == "done" and marker["key"] == items[2]["key"] and marker["batch_id"] == 2
    assert set(marker) == {"status", "key", "batch_id", "content_hash", "workload", "workload_version",
                           "params_digest", "rows_in", "rows_out", "units", "result", "seconds", "finished_at",
                           "job_id", "attempt", "run"}
    assert (marker["content_hash"], marker["workload"], marker["workload_version"], marker["result"]) == (
        "content-2", "noop", "1", RESULT_FILE)
    assert marker["params_digest"] == params_digest({"sleep_s": 0.0, "fail_units": [], "salt": ""})
    assert (marker["rows_in"], marker["rows_out"], marker["units"], marker["run"]) == (2, 2, 2, {"dag_id": "t"})
    assert (marker["job_id"], marker["attempt"]) == ("local", "1")
    result = pd.read_parquet(out / items[2]["key"] / RESULT_FILE)
    assert result.to_dict("list") == {"unit_id": ["u2a", "u2b"], "rows": [1, 1], "value_sum": [3.0, 2.0]}
    assert child_slice(items, 2, 2) == items[4:]
    assert runtime.run(uri, 7) == runtime.EXIT_OK  # an index past the end has nothing to do


def test_running_a_batch_twice_gives_the_same_output_stored_once(tmp_path):
    items = make_batches(tmp_path, 2)
    uri = write_worklist(tmp_path, items, per_child=2)
    assert runtime.run(uri, 0) == 0
    result = tmp_path / "out" / items[0]["key"] / RESULT_FILE
    first = digest(result)
    (tmp_path / "out" / items[0]["key"] / DONE_FILE).unlink()  # as if the marker write had been lost
    assert runtime.run(uri, 0) == 0
    assert digest(result) == first
    assert len(list((tmp_path / "out").rglob(RESULT_FILE))) == 2
    assert not list((tmp_path / "out").rglob(".tmp-*"))


def test_a_done_batch_is_skipped(tmp_path, caplog):
    items = make_batches(tmp_path, 2)
    uri = write_worklist(tmp_path, items, per_child=2)
    assert runtime.run(uri, 0) == 0
    marker = tmp_path / "out" / items[0]["key"] / DONE_FILE
    before = marker.stat().st_mtime_ns
    caplog.set_level("INFO")
    assert runtime.run(uri, 0) == 0
    assert marker.stat().st_mtime_ns == before
    assert "2 cached" in caplog.text


def test_a_foreign_or_truncated_marker_is_not_done(tmp_path):
    items = make_batches(tmp_path, 1)
    folder = tmp_path / "out" / items[0]["key"]
    folder.mkdir(parents=True)
    (folder / DONE_FILE).write_text('{"status": "done", "key": "someone-else"')
    assert runtime.run(write_worklist(tmp_path, items), 0) == 0
    assert json.loads((folder / DONE_FILE).read_text())["key"] == items[0]["key"]


def test_bad_data_is_recorded_and_exits_65_while_the_rest_of_the_slice_runs(tmp_path):
    items = make_batches(tmp_path, 3)
    uri = write_worklist(tmp_path, items, per_child=3,
                         params={"sleep_s": 0.0, "fail_units": ["u1a"], "salt": ""})
    assert runtime.run(uri, 0) == runtime.EXIT_BAD_DATA
    out = tmp_path / "out"
    assert (out / items[0]["key"] / DONE_FILE).exists() and (out / items[2]["key"] / DONE_FILE).exists()
    failed = json.loads((out / items[1]["key"] / FAILED_FILE).read_text())
    assert failed["class"] == "bad_data" and "u1a" in failed["error"]
    assert not (out / items[1]["key"] / DONE_FILE).exists()


def test_transient_errors_exit_75_so_batch_retries(tmp_path, monkeypatch):
    items = make_batches(tmp_path, 2)
    uri = write_worklist(tmp_path, items)
    calls = []
    noop = type(get_workload("noop"))
    real_run = noop.run

    def flaky(self, batch, params):
        calls.append(1)
        if len(calls) == 1:
            raise ConnectionError("connection reset by peer")
        return real_run(self, batch, params)

    monkeypatch.setattr(noop, "run", flaky)
    assert runtime.run(uri, 0) == runtime.EXIT_TRANSIENT
    failed = tmp_path / "out" / items[0]["key"] / FAILED_FILE
    assert json.loads(failed.read_text())["class"] == "transient"
    assert runtime.run(uri, 0) == runtime.EXIT_OK  # the retry does only the batch that failed
    assert len(calls) == 3
    assert (tmp_path / "out" / items[0]["key"] / DONE_FILE).exists() and not failed.exists()


@pytest.mark.parametrize("error, code, kind", [
    (PermissionError(13, "Permission denied"), runtime.EXIT_NO_PERMISSION, "permission_denied"),
    (ConnectionError("connection reset by peer"), runtime.EXIT_TRANSIENT, "transient"),
])
def test_a_child_that_cannot_read_the_markers_runs_nothing_and_says_why(tmp_path, monkeypatch, caplog, error, code,
                                                                         kind):
    from batch_worker.cache import parse_failure_line
    from batch_worker.storage import Location

    items = make_batches(tmp_path, 2)
    uri = write_worklist(tmp_path, items)

    def refused(self, paths):
        raise error

    monkeypatch.setattr(Location, "read_many", refused)
    assert runtime.run(uri, 0) == code
    [record] = [r for r in map(parse_failure_line, caplog.messages) if r]
    assert record["class"] == kind
    assert record["error"].startswith(f"cannot read the markers under {tmp_path / 'out'}: ")
    assert not (tmp_path / "out").exists()


def test_a_batch_is_read_to_the_same_frame_with_or_without_threads(tmp_path, monkeypatch):
    frame = pd.DataFrame({"unit_id": [f"u{i % 7}" for i in range(300)], "seq": range(300),
                          "value": [i / 3 for i in range(300)]})
    path = tmp_path / "batch.parquet"
    frame.to_parquet(path, index=False, row_group_size=100)
    single = runtime.read_batch(str(path))
    monkeypatch.setattr(runtime, "THREADED_READ_ROWS", 1)
    pd.testing.assert_frame_equal(runtime.read_batch(str(path)), single)
    pd.testing.assert_frame_equal(single, pd.read_parquet(path))


def test_an_unexpected_error_exits_1_with_its_traceback(tmp_path, monkeypatch, caplog):
    items = make_batches(tmp_path, 1)
    monkeypatch.setattr(type(get_workload("noop")), "run", lambda self, b, p: 1 / 0)
    assert runtime.run(write_worklist(tmp_path, items), 0) == runtime.EXIT_ERROR
    assert "ZeroDivisionError" in caplog.text and "Traceback" in caplog.text


@pytest.mark.parametrize("changes, message", [
    ({"workload_version": "0"}, "run different code"),
    ({"workload": "nope"}, "unknown workload 'nope'"),
    ({"params": {"bogus": 1}}, "unknown parameter(s) ['bogus']"),
    ({"format": 9}, "has format 9"),
])
def test_an_unusable_worklist_exits_64_naming_the_problem(tmp_path, caplog, changes, message):
    uri = write_worklist(tmp_path, make_batches(tmp_path, 1), **changes)
    assert runtime.run(uri, 0) == runtime.EXIT_USAGE
    assert message in caplog.text


def test_the_cli_reads_the_array_index_from_aws_batch(tmp_path):
    items = make_batches(tmp_path, 4)
    uri = write_worklist(tmp_path, items, per_child=1)
    done = subprocess.run(["batch-worker", uri], env={"AWS_BATCH_JOB_ARRAY_INDEX": "3", "PATH": _path()},
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert [p.name for p in (tmp_path / "out").iterdir()] == [items[3]["key"]]
    missing = subprocess.run(["batch-worker", str(tmp_path / "absent.json")], env={"PATH": _path()},
                             capture_output=True, text=True)
    assert missing.returncode == runtime.EXIT_USAGE and "does not exist" in missing.stdout


def _path() -> str:
    import os
    import sys

    return os.path.dirname(sys.executable) + ":/usr/bin:/bin"


def test_the_runtime_reads_and_writes_s3_through_the_endpoint(local_aws, tmp_path):
    """What a container does on AWS: worklist, batches and outputs on S3, found through AWS_ENDPOINT_URL."""
    import os

    s3 = local_aws.s3
    s3.create_bucket(Bucket="airbatch-runtime")
    items = make_batches(tmp_path, 3)
    for item in items:  # where prep puts them, under the run's folder: the job role may read runs/
        key = f"runs/r/batches/bucket={item['batch_id']}/data_0.parquet"
        s3.upload_file(item["uri"], "airbatch-runtime", key)
        item["uri"] = f"s3://airbatch-runtime/{key}"
    worklist = json.loads(Path(write_worklist(tmp_path, items, per_child=3)).read_text())
    worklist["output_root"] = "s3://airbatch-runtime/outputs/noop"
    old_failure = f"outputs/noop/{items[1]['key']}/{FAILED_FILE}"  # from an earlier attempt: a success clears it
    s3.put_object(Bucket="airbatch-runtime", Key=old_failure, Body=b'{"status": "failed", "class": "transient"}')
    s3.put_object(Bucket="airbatch-runtime", Key="runs/r/worklists/w.json", Body=json.dumps(worklist).encode())
    env = {"PATH": _path(), "AWS_ENDPOINT_URL": local_aws.url,
           "AWS_ACCESS_KEY_ID": local_aws.credentials.job.access_key_id,  # a job's keys, as a job has
           "AWS_SECRET_ACCESS_KEY": local_aws.credentials.job.secret_access_key,
           "AWS_DEFAULT_REGION": local_aws.region, "HOME": os.environ["HOME"]}
    with s3_data_root(local_aws, "s3://airbatch-runtime"):  # the job key holds the job role's policy
        done = subprocess.run(["batch-worker", "s3://airbatch-runtime/runs/r/worklists/w.json"], env=env,
                              capture_output=True, text=True, timeout=120)
        again = subprocess.run(["batch-worker", "s3://airbatch-runtime/runs/r/worklists/w.json"], env=env,
                               capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    listed = {o["Key"] for o in s3.list_objects_v2(Bucket="airbatch-runtime", Prefix="outputs/")["Contents"]}
    assert listed == {f"outputs/noop/{i['key']}/{name}" for i in items for name in (RESULT_FILE, DONE_FILE)}
    marker = json.loads(s3.get_object(Bucket="airbatch-runtime", Key=f"outputs/noop/{items[0]['key']}/{DONE_FILE}")
                        ["Body"].read())
    assert marker["key"] == items[0]["key"] and marker["status"] == "done"
    assert again.returncode == 0 and "3 cached" in again.stdout


def test_a_worker_that_cannot_write_its_output_says_so_and_exits_as_not_retryable(tmp_path):
    from batch_worker.cache import parse_failure_line

    items = make_batches(tmp_path, 2)
    # /sys refuses new files to every user, root included: a real store that denies writes
    uri = write_worklist(tmp_path, items, per_child=2, output_root="/sys/airbatch-no-write/outputs/noop")
    done = subprocess.run(["batch-worker", uri], env={"PATH": _path()}, capture_output=True, text=True, timeout=120)
    assert done.returncode == runtime.EXIT_NO_PERMISSION, done.stdout + done.stderr
    records = [r for r in map(parse_failure_line, done.stdout.splitlines()) if r]
    assert [r["batch_id"] for r in records] == [0, 1]
    assert {r["class"] for r in records} == {"permission_denied"}
    assert "PermissionError" in records[0]["error"] and "/sys/airbatch-no-write" in records[0]["error"]


@pytest.mark.parametrize("exc, kind", [
    (PermissionError(13, "Permission denied"), "permission_denied"),
    (OSError(30, "Read-only file system"), "permission_denied"),
    (type("ClientError", (Exception,), {"response": {"Error": {"Code": "AccessDenied"}}})(), "permission_denied"),
    (ConnectionError("reset"), "transient"),
    (ValueError("bug"), "error"),
])
def test_failures_are_classed_by_what_a_retry_can_fix(exc, kind):
    assert runtime.failure_class(exc) == kind


def test_an_unusable_worklist_reports_a_config_error(tmp_path):
    from batch_worker.cache import parse_failure_line

    items = make_batches(tmp_path, 1)
    uri = write_worklist(tmp_path, items, params={"sleep_s": -1, "fail_units": [], "salt": ""})
    done = subprocess.run(["batch-worker", uri], env={"PATH": _path()}, capture_output=True, text=True, timeout=120)
    assert done.returncode == runtime.EXIT_USAGE
    [record] = [r for r in map(parse_failure_line, done.stdout.splitlines()) if r]
    assert record["class"] == "config" and "sleep_s must be >= 0" in record["error"]
    assert record["error"].startswith("cannot run: ")
    assert done.stdout.index("cannot run: ") < done.stdout.index("airbatch-failure")  # the child's own line comes first


def test_an_output_of_the_wrong_type_fails_the_batch_naming_workload_batch_and_column(tmp_path, monkeypatch):
    items = make_batches(tmp_path, 2)
    noop = type(get_workload("noop"))
    real_run = noop.run

    def rows_as_text(self, batch, params):
        out = real_run(self, batch, params)
        return out.assign(rows=out["rows"].astype(str)) if batch["value"].iloc[0] == 2.0 else out

    monkeypatch.setattr(noop, "run", rows_as_text)
    assert runtime.run(write_worklist(tmp_path, items), 0) == runtime.EXIT_BAD_DATA
    out = tmp_path / "out"
    assert (out / items[0]["key"] / DONE_FILE).exists() and not (out / items[1]["key"] / DONE_FILE).exists()
    failed = json.loads((out / items[1]["key"] / FAILED_FILE).read_text())
    assert failed["class"] == "bad_data"
    assert failed["error"].startswith("OutputSchemaError: workload 'noop' batch 1: output column 'rows' is declared "
                                      "int but is str")


def test_the_result_file_carries_the_declared_types(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    items = make_batches(tmp_path, 1)
    assert runtime.run(write_worklist(tmp_path, items), 0) == runtime.EXIT_OK
    written = pq.read_schema(tmp_path / "out" / items[0]["key"] / RESULT_FILE)
    assert [(f.name, f.type, f.nullable) for f in written] == [
        ("unit_id", pa.large_string(), False), ("rows", pa.int64(), False), ("value_sum", pa.float64(), True)]


# --- small batches run in groups ---------------------------------------------------------------------

def run_slice_outputs(tmp_path: Path, items: list[dict], name: str, **worklist) -> dict[str, tuple[str, dict]]:
    """Run every item in one child on the output root `name`; {key: (result digest, marker)}."""
    uri = write_worklist(tmp_path, items, per_child=len(items), output_root=str(tmp_path / name), **worklist)
    code = runtime.run(uri, 0)
    out = tmp_path / name
    return code, {item["key"]: (digest(out / item["key"] / RESULT_FILE),
                                json.loads((out / item["key"] / DONE_FILE).read_text()))
                  for item in items if (out / item["key"] / DONE_FILE).exists()}


def outputs_batch_by_batch(tmp_path: Path, items: list[dict], monkeypatch) -> dict[str, tuple[str, dict]]:
    with monkeypatch.context() as patch:
        patch.setattr(type(get_workload("noop")), "combines_batches", lambda self, params: False)
        code, alone = run_slice_outputs(tmp_path, items, "alone")
    assert code == 0 and len(alone) == len(items) and all("group" not in marker for _, marker in alone.values())
    return alone


def test_batches_run_together_give_each_batch_the_result_it_gets_alone(tmp_path, monkeypatch, caplog):
    items = make_batches(tmp_path, 12)
    alone = outputs_batch_by_batch(tmp_path, items, monkeypatch)
    monkeypatch.setattr(runtime, "GROUP_TARGET_S", 1e6)  # every group as large as the limits allow
    calls = []
    noop = type(get_workload("noop"))
    real_run = noop.run
    monkeypatch.setattr(noop, "run", lambda self, batch, params: calls.append(len(batch)) or real_run(self, batch, params))
    caplog.set_level("INFO")
    code, together = run_slice_outputs(tmp_path, items, "together")
    assert code == 0
    assert calls == [2, 22]  # the first batch alone (it sets the pace), then the other 11 in one call
    assert {key: result for key, (result, _) in together.items()} == {key: result for key, (result, _) in alone.items()}
    markers = [together[item["key"]][1] for item in items]
    assert [m.get("group") for m in markers] == [None] + [11] * 11
    assert all((m["rows_in"], m["rows_out"], m["units"]) == (2, 2, 2) for m in markers)
    assert "batch 5: 2 rows -> 2 rows in" in caplog.text and "(run with 10 other batch(es))" in caplog.text


def test_a_workload_that_reorders_its_input_in_place_still_gets_each_unit_to_its_batch(tmp_path, monkeypatch):
    items = make_batches(tmp_path, 8)
    alone = outputs_batch_by_batch(tmp_path, items, monkeypatch)
    monkeypatch.setattr(runtime, "GROUP_TARGET_S", 1e6)
    noop = type(get_workload("noop"))
    real_run = noop.run

    def reorders(self, batch, params):  # the rows in reverse order, in the frame it was given
        for column in batch.columns:
            batch[column] = batch[column].iloc[::-1].to_numpy()
        return real_run(self, batch, params)

    monkeypatch.setattr(noop, "run", reorders)
    code, together = run_slice_outputs(tmp_path, items, "together")
    assert code == 0 and sum("group" in marker for _, marker in together.values()) == 7
    assert {k: r for k, (r, _) in together.items()} == {k: r for k, (r, _) in alone.items()}


def test_a_failure_in_a_group_lands_on_its_own_batch_and_the_others_succeed(tmp_path, monkeypatch, caplog):
    items = make_batches(tmp_path, 6)
    monkeypatch.setattr(runtime, "GROUP_TARGET_S", 1e6)
    caplog.set_level("INFO")
    code, done = run_slice_outputs(tmp_path, items, "out", params={"sleep_s": 0.0, "fail_units": ["u3b"], "salt": ""})
    assert code == runtime.EXIT_BAD_DATA
    assert set(done) == {item["key"] for item in items if item["batch_id"] != 3}
    failed = json.loads((tmp_path / "out" / items[3]["key"] / FAILED_FILE).read_text())
    assert failed["batch_id"] == 3 and failed["class"] == "bad_data" and "u3b" in failed["error"]
    assert "batches 1..5 together: BadData" in caplog.text and "running them one at a time" in caplog.text


def test_a_group_whose_output_names_no_unit_of_it_runs_batch_by_batch(tmp_path, monkeypatch, caplog):
    items = make_batches(tmp_path, 6)
    monkeypatch.setattr(runtime, "GROUP_TARGET_S", 1e6)
    noop = type(get_workload("noop"))
    real_run = noop.run

    def renamed(self, batch, params):  # a unit the input does not hold: the rows cannot be split by unit
        return real_run(self, batch, params).assign(unit_id=lambda f: f["unit_id"] + "-x")

    monkeypatch.setattr(noop, "run", renamed)
    caplog.set_level("INFO")
    code, done = run_slice_outputs(tmp_path, items, "out")
    assert code == 0 and len(done) == 6 and all("group" not in marker for _, marker in done.values())
    # the first batch ran alone, the other five together: their 10 output rows cannot be split
    assert "10 output row(s) name no unit of the group by unit_id" in caplog.text
    assert caplog.text.count("running them one at a time") == 1  # then no more groups in this child
    result = pd.read_parquet(tmp_path / "out" / items[4]["key"] / RESULT_FILE)
    assert result["unit_id"].tolist() == ["u4a-x", "u4b-x"]


def test_batches_whose_columns_pandas_types_differently_run_one_at_a_time(tmp_path, monkeypatch, caplog):
    items = make_batches(tmp_path, 6)
    # batch 3's seq holds a null: pandas reads it as float there, int elsewhere
    pq.write_table(pa.table({"unit_id": ["u3a", "u3b"], "seq": pa.array([0, None], pa.int64()), "value": [4.0, 2.0]}),
                   items[3]["uri"])  # as prep writes it: no pandas metadata
    assert runtime.read_batch(items[3]["uri"])["seq"].dtype == "float64"
    alone = outputs_batch_by_batch(tmp_path, items, monkeypatch)
    monkeypatch.setattr(runtime, "GROUP_TARGET_S", 1e6)
    seen = []
    noop = type(get_workload("noop"))
    real_run = noop.run
    monkeypatch.setattr(noop, "run", lambda self, batch, params: seen.append(str(batch["seq"].dtype))
                        or real_run(self, batch, params))
    caplog.set_level("INFO")
    code, together = run_slice_outputs(tmp_path, items, "together")
    assert code == 0 and seen == ["int64", "int64", "int64", "float64", "int64", "int64"]
    assert "batches 1..5: their columns' types differ; running them one at a time" in caplog.text
    assert {k: r for k, (r, _) in together.items()} == {k: r for k, (r, _) in alone.items()}


def test_a_group_that_fails_where_its_batches_do_not_ends_grouping_for_the_child(tmp_path, monkeypatch, caplog):
    items = make_batches(tmp_path, 12)
    monkeypatch.setattr(runtime, "GROUP_TARGET_S", 1e6)
    monkeypatch.setattr(runtime, "GROUP_MAX_BATCHES", 4)
    calls = []
    noop = type(get_workload("noop"))
    real_run = noop.run

    def fails_together(self, batch, params):  # an output only a call of several batches gets wrong
        calls.append(len(batch))
        result = real_run(self, batch, params)
        return result.assign(rows="many") if len(batch) > 2 else result

    monkeypatch.setattr(noop, "run", fails_together)
    caplog.set_level("INFO")
    code, done = run_slice_outputs(tmp_path, items, "out")
    assert code == 0 and len(done) == 12 and all("group" not in marker for _, marker in done.values())
    assert calls == [2, 8] + [2] * 11  # one group failed, its batches then succeeded alone: no more groups
    assert "batches 1..4 together: OutputSchemaError" in caplog.text
    assert "running the rest of the slice one batch at a time" in caplog.text


def test_the_group_pace_holds_the_rows_the_last_call_got_through(monkeypatch):
    pending = [{"rows": 2}] * 3000
    pace = runtime.GroupPace()
    assert len(pace.next_group(pending, 0)) == 1  # no call yet: the first batch runs alone
    pace.record(rows=2, seconds=2 * runtime.GROUP_TARGET_S)  # slow: one row per target
    assert len(pace.next_group(pending, 0)) == 1
    pace.record(rows=2, seconds=0.9 * runtime.GROUP_TARGET_S)  # a call mostly of fixed cost: twice its rows
    assert len(pace.next_group(pending, 0)) == 2
    pace.record(rows=2, seconds=runtime.GROUP_TARGET_S / 50)  # 100 rows per target: 50 batches of 2
    assert len(pace.next_group(pending, 10)) == 50
    assert len(pace.next_group(pending, 2990)) == 10  # no further than the slice
    pace.record(rows=2, seconds=0)  # instant: the limits hold
    assert len(pace.next_group(pending, 0)) == runtime.GROUP_MAX_BATCHES
    assert len(pace.next_group([{"rows": 40_000}] * 3, 0)) == 1  # 80,000 rows > GROUP_MAX_ROWS
    assert len(pace.next_group([{"rows": 2}, {}, {"rows": 2}], 0)) == 1  # a batch without its rows runs alone
    assert len(pace.next_group([{"rows": 2}, {"rows": "2"}], 0)) == 1
    assert len(pace.next_group([{"rows": True}, {"rows": 2}], 0)) == 1
    assert len(pace.next_group([{"rows": 2}, {"rows": 0}, {"rows": 2}], 0)) == 1  # an empty batch runs alone


def test_a_workload_groups_batches_only_when_it_says_so_and_its_output_names_the_unit(tmp_path, monkeypatch):
    from batch_worker.workloads import Workload

    items = make_batches(tmp_path, 2)
    worklist = json.loads(Path(write_worklist(tmp_path, items)).read_text())
    noop = get_workload("noop")
    assert runtime.SliceRunner(worklist, noop, noop.resolve_params({}), items).grouping
    assert not runtime.SliceRunner(worklist, noop, noop.resolve_params({"sleep_s": 0.1}), items).grouping
    assert Workload.combines_batches(noop, {}) is False  # the default: batch by batch
    monkeypatch.setattr(type(noop), "output", None)  # no declared output: nothing names the unit
    assert not runtime.SliceRunner(worklist, noop, noop.resolve_params({}), items).grouping


def test_a_combines_batches_that_raises_leaves_the_batches_to_run_one_at_a_time(tmp_path, monkeypatch, caplog):
    items = make_batches(tmp_path, 4)
    monkeypatch.setattr(type(get_workload("noop")), "combines_batches", lambda self, params: params["missing"])
    code, done = run_slice_outputs(tmp_path, items, "out")
    assert code == 0 and len(done) == 4 and all("group" not in marker for _, marker in done.values())
    assert "workload noop: combines_batches raised KeyError: 'missing'; its batches run one at a time" in caplog.text



class Exited(Exception):
    """os._exit, caught: the code it was given."""


@pytest.mark.parametrize("raised, code, printed", [
    (None, runtime.EXIT_BAD_DATA, ""),  # main returned 65
    (SystemExit(2), 2, ""),  # argparse's usage error (it printed its own message)
    (SystemExit(None), 0, ""),
    (SystemExit("cannot go on"), runtime.EXIT_ERROR, "cannot go on"),
    (KeyboardInterrupt(), 130, ""),
    (RuntimeError("a bug in the worker"), runtime.EXIT_ERROR, "RuntimeError: a bug in the worker"),
])
def test_the_command_ends_with_mains_code_and_skips_the_teardown_that_can_abort(monkeypatch, capsys, raised, code,
                                                                               printed):
    """Arrow's thread pools can abort the interpreter's teardown (exit 134 after the work is done): the
    command exits through os._exit with the code main gave, after flushing what it printed."""
    def main():
        print("the slice's last line")
        if raised is not None:
            raise raised
        return runtime.EXIT_BAD_DATA

    def exit_now(given):
        raise Exited(given)

    monkeypatch.setattr(runtime, "main", main)
    monkeypatch.setattr(runtime.os, "_exit", exit_now)
    with pytest.raises(Exited) as exited:
        runtime.console_main()
    assert exited.value.args == (code,)
    out, err = capsys.readouterr()
    assert out == "the slice's last line\n"
    assert printed in err and (printed or err == "")


def test_the_installed_command_is_the_one_that_skips_the_teardown():
    from importlib.metadata import entry_points

    (command,) = entry_points(group="console_scripts", name="batch-worker")
    assert command.value == "batch_worker.runtime:console_main"
