"""The run view's logic without a run: the note's counts, confinement to the run's folders, its address."""
from __future__ import annotations

import pytest

from operators.kit import runview


def test_failed_shards_count_as_failed_and_completed_shards_failures_as_dead_lettered():
    completed = [{"batches": 10, "succeeded": 6, "cached": 3, "failed": 1, "units_failed": 4}]
    failed = [{"batches": 10, "succeeded": 2, "cached": 0, "failed": 8, "units_failed": 30}]
    counts = runview.batch_counts(completed, failed)
    assert counts == {"batches": 20, "done": 8, "cached": 3, "failed": 8, "dead_lettered": 1,
                      "units_dead_lettered": 4}
    assert runview.note_text(counts, {"cost": 0.0123, "currency": "USD"}) == \
        "20 batches: 8 done, 3 cached, 8 failed, 1 dead-lettered (4 units); cost $0.01 (estimate)"
    assert runview.note_text(counts, {"cost": 2.6e-06, "currency": "USD"}).endswith("cost $0.0000026 (estimate)")


def test_the_note_of_a_collected_run_counts_its_failed_batches_as_dead_lettered():
    fanout = {"batches": 3000, "succeeded": 2990, "cached": 0, "failed": 10, "units_failed": 333}
    assert runview.run_note(fanout) == "3,000 batches: 2,990 done, 0 cached, 0 failed, 10 dead-lettered (333 units)"


def test_a_note_of_one_batch_and_one_unit_reads_in_the_singular():
    fanout = {"batches": 1, "succeeded": 0, "cached": 0, "failed": 1, "units_failed": 1}
    assert runview.run_note(fanout) == "1 batch: 0 done, 0 cached, 0 failed, 1 dead-lettered (1 unit)"


@pytest.mark.parametrize("path", ["../x", "a/../../x", "/etc/passwd", "s3://bucket/key", "", ".", "a\\..\\b",
                                  "results/..", "x\x00y"])
def test_paths_outside_the_run_folder_are_refused_before_anything_is_read(path):
    files = runview.RunFiles("/data/runs/dag/run")
    with pytest.raises(runview.OutsideRunFolders):
        files.resolve(path)


def test_paths_inside_the_run_folders_resolve_under_them():
    files = runview.RunFiles("s3://b/data/runs/dag/run", version_dir="s3://b/data/registry/m/versions/v1")
    assert files.resolve("results/shard-0.json") == "s3://b/data/runs/dag/run/results/shard-0.json"
    assert files.resolve("report.html", files.version_dir) == "s3://b/data/registry/m/versions/v1/report.html"
    with pytest.raises(runview.OutsideRunFolders):
        files.resolve("report.html", "s3://b/data/registry/m/versions/v2")


def test_a_report_is_served_only_from_a_registry_version_that_belongs_to_the_run(tmp_path):
    root = str(tmp_path)
    folder = tmp_path / "registry" / "m" / "versions" / "v1"
    folder.mkdir(parents=True)
    (folder / "version.json").write_text('{"lineage": {"dag_id": "d", "run_id": "r1"}}')
    report = f"{folder}/report.html"
    assert runview.version_folder_of(report, "r1", "d", root, None)[0] == str(folder)
    assert runview.version_folder_of(report, "r2", "d", root, None) == (None, None)
    assert runview.version_folder_of(f"{tmp_path}/elsewhere/report.html", "r1", "d", root, None) == (None, None)


def test_the_run_view_address_quotes_the_run_id():
    assert runview.run_view_path("pricing", "manual__2026-02-16T00:00:00+00:00") == \
        "/airbatch/runs/pricing/manual__2026-02-16T00%3A00%3A00%2B00%3A00"


def test_the_page_escapes_what_the_run_recorded():
    data = {"dag_id": "d", "run_id": "<script>x</script>", "note": "n", "counts": {}, "cost": None, "version": None,
            "lineage": {"input_uri": "<img src=x onerror=alert(1)>"}, "has_report": False,
            "shards": [{"shard": 0, "label": "shard 0", "state": "success", "batches": 1, "done": 0, "cached": 0,
                        "failed": 0, "dead_lettered": 1, "failures_by_class": {"bad_data": 1},
                        "first_errors": {"bad_data": "<b>boom</b>"}, "jobs": []}]}
    page = runview.render_page(data, {"total": 0, "page": 1, "pages": 1, "columns": [], "rows": []})
    assert "<script>x" not in page and "<img src=x" not in page and "<b>boom" not in page
    assert "&lt;b&gt;boom&lt;/b&gt;" in page


def test_a_run_that_skipped_itself_shows_why_instead_of_counts_and_a_missing_cost():
    skipped = {"task_id": "dataset", "reason": "no approved version of model 'packaging' yet: <run training>"}
    data = {"dag_id": "d", "run_id": "r", "note": runview.skip_note(skipped), "counts": {}, "cost": None,
            "version": None, "lineage": {}, "has_report": False, "shards": [], "skipped": skipped}
    page = runview.render_page(data, {"total": 0, "page": 1, "pages": 1, "columns": [], "rows": []})
    assert ("skipped at dataset: no approved version of model &#x27;packaging&#x27; yet: &lt;run training&gt;"
            in page)
    assert "the run skipped itself before any Batch job" in page and "collect step has not run" not in page


def test_the_note_of_a_run_whose_shard_left_no_summary_counts_that_shards_batches_as_not_finished(monkeypatch):
    # After a restart killed a shard's task, only the other shard had a summary: the note said "10 batches:
    # 10 done" of a run of 20.
    plan = [{"shard": {"index": 0, "start": 0, "stop": 10}}, {"shard": {"index": 1, "start": 10, "stop": 20}}]
    records = {("plan", "return_value"): [("plan", -1, plan)],
               ("run_shard", "return_value"): [("run_shard", 0, {"batches": 10, "succeeded": 10, "cached": 0,
                                                                 "failed": 0})],
               ("run_shard", "summary"): [], ("collect", "return_value"): [], ("summary", "return_value"): []}

    def xcoms(session, dag_id, run_id, task_ids, key="return_value"):
        return [row for task_id in task_ids for row in records.get((task_id, key), [])]

    monkeypatch.setattr(runview, "xcoms", xcoms)
    assert runview.note_for_run(None, "units_of_work", "r") == \
        "20 batches: 10 done, 0 cached, 0 failed, 0 dead-lettered, 10 not finished (their shard has no result)"
    records[("run_shard", "summary")] = [("run_shard", 1, {"batches": 10, "succeeded": 4, "cached": 0, "failed": 6})]
    assert runview.note_for_run(None, "units_of_work", "r") == "20 batches: 14 done, 0 cached, 6 failed, 0 dead-lettered"


def test_the_dead_letter_export_opens_formula_like_cells_as_text_and_keeps_numbers(tmp_path):
    import csv
    import io

    import pandas as pd

    keys = ['=HYPERLINK("http://attacker.example","x")', "+1+1", "-2+3", "@SUM(A1)", "\tcmd", "u000001"]
    pd.DataFrame({"unit_id": keys, "rows": [1, -2, 3, 4, 5, 6], "reason": ["bad"] * 6}).to_parquet(
        tmp_path / runview.DEAD_LETTER_FILE)
    files = runview.RunFiles(str(tmp_path), data_root=str(tmp_path.parent))
    rows = list(csv.DictReader(io.StringIO(runview.dead_letter_csv(files))))
    assert [row["unit_id"] for row in rows] == ["'" + key for key in keys[:5]] + ["u000001"]
    assert [row["rows"] for row in rows] == ["1", "-2", "3", "4", "5", "6"]  # numbers stay numbers
    assert all(row["reason"] == "bad" for row in rows)


# -- no symbolic link between DATA_ROOT and a file ---------------------------------------------------------

def a_run(root) -> runview.RunFiles:
    """DATA_ROOT/runs/dag/run with a result, a cost and a registry version; a secret outside DATA_ROOT."""
    run = root / "data" / "runs" / "dag" / "run"
    (run / "results").mkdir(parents=True)
    (run / "results" / "shard-0.json").write_text('{"shard": {"index": 0}, "batches": []}')
    (run / "cost.json").write_text('{"cost": 1}')
    version = root / "data" / "registry" / "m" / "versions" / "v1"
    version.mkdir(parents=True)
    (version / "version.json").write_text('{"lineage": {"dag_id": "dag", "run_id": "run"}}')
    (version / "report.html").write_text("<p>report</p>")
    (root / "elsewhere").mkdir()
    (root / "elsewhere" / "secret.txt").write_text("the secret")
    return runview.RunFiles(str(run), version_dir=str(version), aws_conn_id=None, data_root=str(root / "data"))


def move_behind_link(folder, root) -> None:
    """Put a copy of `folder` outside DATA_ROOT (with the secret beside its files) and `folder` as a link to it."""
    import shutil

    copy = root / "elsewhere" / f"copy-of-{folder.name}"
    shutil.copytree(folder, copy)
    for sub in [copy, *[p for p in copy.rglob("*") if p.is_dir()]]:
        (sub / "secret.txt").write_text("the secret")
    shutil.rmtree(folder)
    folder.symlink_to(copy, target_is_directory=True)


def test_the_run_files_are_read_when_no_link_is_on_the_way(tmp_path):
    files = a_run(tmp_path)
    assert files.read_json("cost.json") == {"cost": 1}
    assert list(files.shard_results()) == [0]
    assert files.read("report.html", files.version_dir) == b"<p>report</p>"
    assert files.read_json("missing.json") is None
    with pytest.raises(IsADirectoryError):
        files.read("results")
    assert runview.version_folder_of(f"{files.version_dir}/report.html", "run", "dag", files.data_root,
                                     None)[0] == files.version_dir


def test_data_root_itself_may_be_a_link(tmp_path):
    files = a_run(tmp_path)
    (tmp_path / "linked-data").symlink_to(tmp_path / "data", target_is_directory=True)
    linked = runview.RunFiles(str(tmp_path / "linked-data" / "runs" / "dag" / "run"), aws_conn_id=None,
                              data_root=str(tmp_path / "linked-data"))
    assert linked.read_json("cost.json") == {"cost": 1} and list(linked.shard_results()) == [0]
    assert files.read_json("cost.json") == {"cost": 1}


@pytest.mark.parametrize("linked", ["runs", "runs/dag", "runs/dag/run", "runs/dag/run/results"])
def test_a_linked_folder_between_data_root_and_the_run_files_is_refused(tmp_path, linked):
    files = a_run(tmp_path)
    move_behind_link(tmp_path / "data" / linked, tmp_path)
    reads = [lambda: files.shard_results(), lambda: files.read("results/secret.txt")]
    if linked != "runs/dag/run/results":
        reads += [lambda: files.read("secret.txt"), lambda: files.read_json("cost.json")]
    for read in reads:
        with pytest.raises(runview.UnsafePath, match=f"DATA_ROOT/{linked} is a symbolic link"):
            read()


@pytest.mark.parametrize("linked", ["registry", "registry/m", "registry/m/versions", "registry/m/versions/v1"])
def test_a_linked_registry_folder_is_refused(tmp_path, linked):
    files = a_run(tmp_path)
    version_dir = files.version_dir
    move_behind_link(tmp_path / "data" / linked, tmp_path)
    with pytest.raises(runview.UnsafePath, match=f"DATA_ROOT/{linked} is a symbolic link"):
        files.read("report.html", version_dir)
    with pytest.raises(runview.UnsafePath):
        runview.version_folder_of(f"{version_dir}/report.html", "run", "dag", files.data_root, None)


def test_a_linked_file_is_refused_wherever_it_points(tmp_path):
    files = a_run(tmp_path)
    run = tmp_path / "data" / "runs" / "dag" / "run"
    (run / "escape.txt").symlink_to(tmp_path / "elsewhere" / "secret.txt")
    (run / "inside.json").symlink_to(run / "cost.json")  # even a link that stays inside the folder
    (run / "results" / "shard-1.json").symlink_to(tmp_path / "elsewhere" / "secret.txt")
    for name in ("escape.txt", "inside.json"):
        with pytest.raises(runview.UnsafePath, match=f"DATA_ROOT/runs/dag/run/{name} is a symbolic link"):
            files.read(name)
    with pytest.raises(runview.UnsafePath, match="shard-1.json is a symbolic link"):
        files.shard_results()


def test_a_fifo_in_the_run_folder_is_refused_without_waiting_for_a_writer(tmp_path):
    import os

    files = a_run(tmp_path)
    os.mkfifo(tmp_path / "data" / "runs" / "dag" / "run" / "pipe")
    os.mkfifo(tmp_path / "data" / "runs" / "dag" / "run" / "results" / "shard-2.json")
    with pytest.raises(runview.UnsafePath, match="not a regular file"):
        files.read("pipe")
    with pytest.raises(runview.UnsafePath, match="not a regular file"):
        files.shard_results()


def test_a_path_outside_data_root_is_refused(tmp_path):
    files = a_run(tmp_path)
    outside = runview.RunFiles(str(tmp_path / "elsewhere"), aws_conn_id=None, data_root=str(tmp_path / "data"))
    with pytest.raises(runview.OutsideRunFolders, match="not inside DATA_ROOT"):
        outside.read("secret.txt")
    with pytest.raises(runview.OutsideRunFolders, match="not inside DATA_ROOT"):
        runview.read_beneath(files.data_root, files.data_root)


def test_a_link_planted_after_the_folder_was_opened_is_not_followed(tmp_path):
    """The walk holds each folder open: swapping a folder for a link once the walk is inside it changes nothing
    for the walk (it reads the folder it opened) and the next walk refuses the link."""
    import os
    import shutil

    files = a_run(tmp_path)
    run = tmp_path / "data" / "runs" / "dag" / "run"
    handle = runview.open_beneath(files.data_root, str(run), folder=True)
    try:
        shutil.move(str(run), str(tmp_path / "moved-run"))
        run.symlink_to(tmp_path / "elsewhere", target_is_directory=True)
        with pytest.raises(FileNotFoundError):
            os.open("secret.txt", os.O_RDONLY, dir_fd=handle)  # the opened folder is the real one, moved
    finally:
        os.close(handle)
    with pytest.raises(runview.UnsafePath):
        files.read("secret.txt")
