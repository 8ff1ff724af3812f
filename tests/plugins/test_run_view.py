"""The run view plugin and the run note, on a real units_of_work run with a dead-lettered batch.

One run through dag.test() against the local endpoint (about 20 s), then the plugin's routes in the real
api-server app (`airflow.api_fastapi.app.create_app`) with real JWTs: Airflow's authentication and
DAG-level authorisation, confinement to the run's folders, and the same run read from an S3 DATA_ROOT.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from airflow.utils.state import DagRunState
from tests.plugins.apps import plugin_clients, private_data_root
from tests.plugins.auth_manager import OUTSIDER
from tests.system.test_batch_smoke import load_dag

pytestmark = pytest.mark.system
CONF = {"units": 200, "bucket_count": 20, "batches_per_shard": 10, "fail_units": ["u000007"],
        "min_success_ratio": 0.9}


@pytest.fixture(scope="module")
def module_data_root(tmp_path_factory):
    return private_data_root(tmp_path_factory, "runview")


@pytest.fixture(scope="module")
def dead_letter_run(airflow_db, local_aws, module_data_root):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DATA_ROOT", str(module_data_root))
        patch.setenv("SHARD_RETRY_DELAY_S", "1")
        run = load_dag("units_of_work").test(run_conf=CONF)
    assert run.state == DagRunState.SUCCESS
    return run


def summary_of(run) -> dict:
    from operators.kit.runview import xcoms
    from airflow.utils.session import create_session

    with create_session() as session:
        [(_, _, value)] = xcoms(session, run.dag_id, run.run_id, ("summary",))
    return value


def test_the_run_note_says_how_many_batches_were_done_cached_failed_and_dead_lettered(dead_letter_run):
    from sqlalchemy import select

    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    summary = summary_of(dead_letter_run)
    with create_session() as session:
        run = session.scalars(select(DagRun).where(DagRun.dag_id == dead_letter_run.dag_id,
                                                   DagRun.run_id == dead_letter_run.run_id)).one()
        note = run.note
    assert summary["failed"] == 1 and summary["succeeded"] == 19
    assert note.startswith(f"20 batches: 19 done, 0 cached, 0 failed, 1 dead-lettered ({summary['units_failed']} units)")
    assert "(estimate)" in note and note == summary["note"]


def test_collect_prices_every_job_of_the_run_into_the_summary_and_the_run_folder(dead_letter_run, module_data_root):
    summary = summary_of(dead_letter_run)
    cost = summary["cost"]
    assert [s["shard"] for s in cost["shards"]] == [0, 1]
    assert all(s["jobs"] >= 1 and s["seconds"] > 0 for s in cost["shards"])
    assert cost["cost"] > 0 and cost["units"] == summary["units"] and cost["gpu_hours"] == 0
    assert cost["per_unit"] == pytest.approx(cost["cost"] / summary["units"])
    assert "local endpoint" in cost["label"]
    [written] = list(module_data_root.glob("runs/units_of_work/*/cost.json"))
    assert json.loads(written.read_text())["cost"] == cost["cost"]
    # each shard costed its own jobs when they ended; collect added them up
    from operators.kit.runview import xcoms
    from airflow.utils.session import create_session

    with create_session() as session:
        shards = sorted((value for _, _, value in xcoms(session, dead_letter_run.dag_id, dead_letter_run.run_id,
                                                         ("run_shard",))), key=lambda shard: shard["shard"])
    assert [shard["cost"]["jobs"] for shard in shards] == [s["jobs"] for s in cost["shards"]]
    assert sum(shard["cost"]["cost"] for shard in shards) == pytest.approx(cost["cost"])


@pytest.fixture(scope="module")
def api(dead_letter_run):
    """The api-server's app with the plugin mounted, and a client per user (None: no credentials)."""
    with plugin_clients() as client:
        yield client


def view(run) -> str:
    from operators.kit.runview import run_view_path

    return run_view_path(run.dag_id, run.run_id)


def test_requests_without_credentials_or_without_the_right_to_read_the_dag_are_refused(api, dead_letter_run,
                                                                                       module_data_root,
                                                                                       monkeypatch):
    monkeypatch.setenv("DATA_ROOT", str(module_data_root))
    base = view(dead_letter_run)
    for path in ("", "/data.json", "/dead_letter.csv", "/dead_letter.json", "/files/cost.json",
                 f"/jobs/{summary_of(dead_letter_run)['job_ids'][0]}"):
        anonymous = api(None).get(base + path)
        assert anonymous.status_code == 401, (path, anonymous.text)
        outsider = api(OUTSIDER).get(base + path)
        assert outsider.status_code == 403, (path, outsider.text)
        assert "u0000" not in outsider.text and "batches" not in outsider.text
    assert api("reader").get(base + "/data.json").status_code == 200
    assert outsider.headers["x-content-type-options"] == anonymous.headers["x-content-type-options"] == "nosniff"


def test_the_run_view_shows_the_runs_numbers_from_its_files(api, dead_letter_run, module_data_root, monkeypatch):
    import pandas as pd

    monkeypatch.setenv("DATA_ROOT", str(module_data_root))
    reader = api("reader")
    base = view(dead_letter_run)
    summary = summary_of(dead_letter_run)
    data = reader.get(base + "/data.json").json()
    assert data["counts"] == {"batches": 20, "done": 19, "cached": 0, "failed": 0, "dead_lettered": 1}
    [dead_shard] = [s for s in data["shards"] if s["dead_lettered"]]
    assert dead_shard["failures_by_class"] == {"bad_data": 1} and "u000007" in dead_shard["first_errors"]["bad_data"]
    assert data["cost"]["cost"] == summary["cost"]["cost"]
    assert data["lineage"]["workload"] == "noop" and data["version"] is None
    job = dead_shard["jobs"][0]
    assert job["description"].startswith(base + "/jobs/") and "console" not in job  # local: the endpoint's record
    described = reader.get(job["description"] + "/data.json").json()
    assert described["jobId"] == job["job_id"] and described["status"] in ("SUCCEEDED", "FAILED")

    dead = pd.read_parquet(summary["dead_letter"])
    page = reader.get(base + "/dead_letter.json", params={"page": 1}).json()
    assert page["total"] == len(dead) and page["columns"] == list(dead.columns)
    exported = reader.get(base + "/dead_letter.csv")
    assert exported.headers["x-content-type-options"] == "nosniff"
    rows = list(csv.DictReader(io.StringIO(exported.text)))
    assert sorted(r["unit_id"] for r in rows) == sorted(dead["unit_id"])

    html = reader.get(base).text
    assert "20 batches: 19 done, 0 cached, 0 failed, 1 dead-lettered" in html
    assert "bad_data" in html and "Download all as CSV" in html and "u000007" in html
    shard_page = reader.get(base, params={"shard": dead_shard["shard"]}).text
    assert dead_shard["label"] in shard_page and f"Shard {dead_shard['shard']} only" in shard_page


def test_a_shards_batch_links_open_the_run_views_job_page_on_the_local_endpoint(api, dead_letter_run,
                                                                             module_data_root, monkeypatch):
    """The provider's links point at the AWS console, which knows no job of the local endpoint: here they open
    the run view's page of the job, with its status, attempts and log tail read through the endpoint."""
    from urllib.parse import quote

    monkeypatch.setenv("DATA_ROOT", str(module_data_root))
    reader = api("reader")
    base = view(dead_letter_run)
    run_id = quote(dead_letter_run.run_id, safe="")
    answer = reader.get(f"/api/v2/dags/{dead_letter_run.dag_id}/dagRuns/{run_id}/taskInstances/run_shard/links",
                        params={"map_index": 0})
    assert answer.status_code == 200, answer.text
    links = answer.json()["extra_links"]
    assert set(links) == {"Batch Job Details", "Batch Job Definition", "Batch Job Queue", "CloudWatch Events"}
    assert not any("console.aws" in (link or "") for link in links.values()), links
    details = links["Batch Job Details"]
    assert details.startswith(base + "/jobs/"), links
    job_id = details.rsplit("/", 1)[-1]
    assert links["CloudWatch Events"] == details + "#log" and links["Batch Job Queue"] == details + "#job"

    page = reader.get(details)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert f"AWS Batch job {job_id}" in page.text and "airbatch-cpu" in page.text and "SUCCEEDED" in page.text
    assert "array" in page.text and "<script" not in page.text
    # an array job logs per child: a child's page has its attempts and the tail of its log
    child = reader.get(f"{details}:0")
    assert child.status_code == 200 and "Attempts (1)" in child.text, child.text
    assert '<h2 id="log">' in child.text and "No log stream" not in child.text
    assert "child 0 finished in" in child.text  # the worker's own last line, read through the endpoint


def test_a_job_page_escapes_what_the_job_recorded():
    from operators.kit import runview

    job = {"jobId": "j-1", "jobName": "<img src=x onerror=alert(1)>", "status": "FAILED",
           "statusReason": "<b>boom</b>", "attempts": [{"startedAt": 0, "stoppedAt": 1000,
                                                       "container": {"exitCode": 1, "reason": "<i>oom</i>"}}]}
    page = runview.render_job_page("d", "r", job, ["<script>alert(1)</script>"], [])
    assert "<img src=x" not in page and "<b>boom" not in page and "<script>alert" not in page
    assert "&lt;b&gt;boom&lt;/b&gt;" in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_a_job_of_another_run_and_paths_outside_the_runs_folder_are_refused(api, dead_letter_run, module_data_root,
                                                                           monkeypatch):
    monkeypatch.setenv("DATA_ROOT", str(module_data_root))
    reader = api("reader")
    base = view(dead_letter_run)
    (module_data_root / "secret.txt").write_text("not the run's")
    assert reader.get(base + "/files/cost.json").status_code == 200
    for path in ("../../../secret.txt", "..%2F..%2F..%2Fsecret.txt", "%2Fetc%2Fpasswd", "results/../../../../secret.txt",
                 "results/..%2F..%2F..%2F..%2Fsecret.txt", "s3:%2F%2Fbucket%2Fkey"):
        response = reader.get(base + "/files/" + path)
        assert response.status_code in (403, 404), (path, response.status_code)
        assert "not the run's" not in response.text
    assert reader.get(base + "/files/..%2F..%2F..%2Fsecret.txt").status_code == 403
    # a symbolic link inside the run folder that points outside it is not followed: as if there were no file
    run_folder = next(module_data_root.glob("runs/units_of_work/*/"))
    (run_folder / "escape.txt").symlink_to(module_data_root / "secret.txt")
    escape = reader.get(base + "/files/escape.txt")
    assert escape.status_code == 404 and "is a symbolic link" in escape.json()["detail"]
    assert "not the run's" not in escape.text
    assert reader.get(base + "/jobs/not-a-job-of-this-run").status_code == 404
    assert reader.get(f"/airbatch/runs/{dead_letter_run.dag_id}/no-such-run/data.json").status_code == 404


def test_an_s3_data_root_on_the_local_endpoint_is_read_too(api, dead_letter_run, module_data_root, local_aws,
                                                           monkeypatch):
    bucket = "runview-bucket"
    local_aws.s3.create_bucket(Bucket=bucket)
    for path in module_data_root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            local_aws.s3.put_object(Bucket=bucket, Key=f"data/{path.relative_to(module_data_root)}",
                                    Body=path.read_bytes())
    monkeypatch.setenv("DATA_ROOT", f"s3://{bucket}/data")
    reader = api("reader")
    base = view(dead_letter_run)
    data = reader.get(base + "/data.json").json()
    assert data["counts"]["dead_lettered"] == 1 and data["dead_letter_units"] >= 1
    assert data["cost"]["cost"] == summary_of(dead_letter_run)["cost"]["cost"]
    assert "u000007" in reader.get(base + "/dead_letter.csv").text
    assert reader.get(base + "/files/..%2F..%2Fsecret.txt").status_code == 403


def test_every_answer_of_the_run_view_is_sent_with_nosniff(api, dead_letter_run, module_data_root, monkeypatch):
    monkeypatch.setenv("DATA_ROOT", str(module_data_root))
    reader = api("reader")
    base = view(dead_letter_run)
    answers = {path: reader.get(base + path) for path in (
        "", "/data.json", "/dead_letter.csv", "/dead_letter.json", "/files/cost.json", "/files/results/shard-0.json",
        "/files/no-such-file", "/files/..%2Fx", "/report", f"/jobs/{summary_of(dead_letter_run)['job_ids'][0]}")}
    assert {path: answer.status_code for path, answer in answers.items()} == {
        "": 200, "/data.json": 200, "/dead_letter.csv": 200, "/dead_letter.json": 200, "/files/cost.json": 200,
        "/files/results/shard-0.json": 200, "/files/no-such-file": 404, "/files/..%2Fx": 403, "/report": 404,
        f"/jobs/{summary_of(dead_letter_run)['job_ids'][0]}": 200}
    for path, answer in answers.items():
        assert answer.headers.get("x-content-type-options") == "nosniff", path


@pytest.mark.parametrize("linked", ["runs", "runs/units_of_work", "run folder", "run folder/results"])
def test_a_run_folder_reached_through_a_link_is_not_served(api, dead_letter_run, module_data_root, monkeypatch,
                                                           tmp_path, linked):
    """A job can replace its run folder (or a folder above it) by a link to /etc: nothing behind the link is read."""
    import shutil

    monkeypatch.setenv("DATA_ROOT", str(module_data_root))
    reader = api("reader")
    base = view(dead_letter_run)
    run_folder = next(module_data_root.glob("runs/units_of_work/*/"))
    folder = {"runs": module_data_root / "runs", "runs/units_of_work": module_data_root / "runs" / "units_of_work",
              "run folder": run_folder, "run folder/results": run_folder / "results"}[linked]
    aside = tmp_path / "aside"
    copy = tmp_path / "behind-the-link"
    shutil.copytree(folder, copy, symlinks=True)
    for sub in [copy, *[p for p in copy.rglob("*") if p.is_dir() and not p.is_symlink()]]:
        (sub / "shadow").write_text("root:secret-hash:19000")
    folder.rename(aside)
    folder.symlink_to(copy, target_is_directory=True)
    try:
        paths = ("/files/results/shadow", "/files/results/shard-0.json", "/data.json", "")
        if linked != "run folder/results":
            paths += ("/files/shadow", "/files/cost.json", "/dead_letter.csv")
        for path in paths:
            answer = reader.get(base + path)
            assert answer.status_code == 404, (path, answer.status_code, answer.text[:300])
            assert "secret-hash" not in answer.text and "is a symbolic link" in answer.json()["detail"], path
            assert answer.headers["x-content-type-options"] == "nosniff"
    finally:
        folder.unlink()
        aside.rename(folder)
    assert reader.get(base + "/files/cost.json").status_code == 200


def test_a_data_root_that_is_itself_a_link_is_served(api, dead_letter_run, module_data_root, monkeypatch, tmp_path):
    (tmp_path / "data-link").symlink_to(module_data_root, target_is_directory=True)
    monkeypatch.setenv("DATA_ROOT", str(tmp_path / "data-link"))
    reader = api("reader")
    base = view(dead_letter_run)
    assert reader.get(base + "/files/cost.json").status_code == 200
    assert reader.get(base + "/data.json").json()["counts"]["dead_lettered"] == 1
