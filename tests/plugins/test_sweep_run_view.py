"""The run view of a training sweep: leaderboard, failures by class, history, cost and the report's link.

Two real sweeps through dag.test() against the local endpoint (a trivial one, then a packaging one with a
configuration that cannot fit), then the plugin's routes in the real api-server app with a real JWT.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from airflow.utils.state import DagRunState
from tests.plugins.apps import plugin_clients, private_data_root
from tests.system.test_batch_smoke import load_dag

pytestmark = pytest.mark.system
SWEEP = {"configurations": [
    {"id": "l2-small", "hyperparameters": {"l2": 0.1}},
    {"id": "l2-big", "hyperparameters": {"l2": 30.0}},
    {"id": "<b>starved</b>", "hyperparameters": {"min_train_labels": 1_000_000}},
]}


@pytest.fixture(scope="module")
def module_data_root(tmp_path_factory):
    return private_data_root(tmp_path_factory, "sweepview")


@pytest.fixture(scope="module")
def sweeps(airflow_db, local_aws, module_data_root):
    """(an earlier trivial sweep, the sweep under test) of training_sweep, in one DATA_ROOT."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DATA_ROOT", str(module_data_root))
        patch.setenv("SHARD_RETRY_DELAY_S", "1")
        # a DAG object per run: a run's conf stays in the DAG's Param objects
        earlier = load_dag("training_sweep").test(run_conf={"sweep": {"grid": {"l2": [2.0, 4.0]},
                                                                      "id_prefix": "trivial-"}, "trainer": "trivial"})
        run = load_dag("training_sweep").test(run_conf={"sweep": SWEEP, "dataset_groups": 2, "dataset_weeks": 10,
                                                        "dataset_labels_per_week": 400})
    assert earlier.state == run.state == DagRunState.SUCCESS
    return earlier, run


def summary_of(run) -> dict:
    from airflow.utils.session import create_session
    from operators.kit.runview import xcoms

    with create_session() as session:
        [(_, _, value)] = xcoms(session, run.dag_id, run.run_id, ("summary",))
    return value


@pytest.fixture(scope="module")
def reader(sweeps):
    """A client of the api-server's app (the plugin mounted) with a reader's JWT."""
    with plugin_clients() as client:
        yield client("reader")


def view(run) -> str:
    from operators.kit.runview import run_view_path

    return run_view_path(run.dag_id, run.run_id)


def test_the_run_view_of_a_sweep_shows_its_leaderboard_failures_history_and_cost(reader, sweeps, module_data_root,
                                                                                  monkeypatch):
    monkeypatch.setenv("DATA_ROOT", str(module_data_root))
    earlier, run = sweeps
    summary = summary_of(run)
    assert summary["counts"] == {"trained": 2, "failed": 1}
    page = reader.get(view(run))
    assert page.status_code == 200 and "<script" not in page.text
    html = page.text

    # the leaderboard: rank, configuration, what sets it apart, its metrics
    board = html.split('id="leaderboard"', 1)[1].split("</table>", 1)[0]
    rows = re.findall(r"<tr><td>(\d+)</td><td>([^<]+)</td><td>([^<]*)</td><td>([0-9.e-]+)</td>", board)
    assert [(rank, config) for rank, config, _, _ in rows] == [
        (str(n), leader["config_id"]) for n, leader in enumerate(summary["leaderboard"], start=1)]
    assert {config for _, config, _, _ in rows} == {"l2-small", "l2-big"}
    assert all(re.fullmatch(r"l2=[0-9.]+, min_train_labels=30", settings) for _, _, settings, _ in rows), rows
    assert float(rows[0][3]) == pytest.approx(summary["leaderboard"][0]["score"], rel=1e-5)

    # failures by class, with the failed configuration escaped as text
    failures = html.split('id="sweep-failures"', 1)[1].split('id="sweep-history"', 1)[0]
    assert "<td>no_fit</td><td>1</td>" in failures and "no unit could be fitted" in failures
    assert "&lt;b&gt;starved&lt;/b&gt;" in failures and "<b>starved" not in html

    # the history: this sweep and the earlier one, newest first
    history = html.split('id="sweep-history"', 1)[1]
    assert history.index(run.run_id) < history.index(earlier.run_id)

    # the cost of the sweep's Batch jobs, instead of "no cost recorded"
    assert "No cost recorded" not in html
    cost = re.search(r'<p id="cost">([^<]+)', html).group(1)
    assert cost.startswith("$") and "for the run" in cost
    assert (Path(summary["report"]).parent / "cost.json").exists()

    # the same figures as data, and the run's note from the sweep
    data = reader.get(view(run) + "/data.json").json()
    assert [leader["config_id"] for leader in data["sweep"]["leaderboard"]] == [
        leader["config_id"] for leader in summary["leaderboard"]]
    assert data["sweep"]["failures_by_class"]["no_fit"]["count"] == 1 and data["cost"]["cost"] > 0
    assert data["sweep"]["report"] == "report.md"
    assert summary["note"].startswith("3 configurations: 1 failed, 2 trained; best ")


def test_the_sweeps_report_is_linked_and_opens_as_plain_text(reader, sweeps, module_data_root, monkeypatch):
    monkeypatch.setenv("DATA_ROOT", str(module_data_root))
    _, run = sweeps
    html = reader.get(view(run)).text
    href = re.search(r'<a id="sweep-report" href="([^"]+)"', html).group(1)
    assert href == view(run) + "/files/report.md"
    report = reader.get(href)
    assert report.status_code == 200
    assert report.headers["content-type"] == "text/plain; charset=utf-8"
    assert report.headers["x-content-type-options"] == "nosniff"
    assert report.headers["content-disposition"] == "inline"
    assert "default-src 'none'" in report.headers["content-security-policy"]
    assert report.text == Path(summary_of(run)["report"]).read_text()
    assert "## Leaderboard" in report.text and "## Cost" in report.text


def test_a_report_replaced_by_a_link_is_neither_linked_nor_served(reader, sweeps, module_data_root, monkeypatch):
    monkeypatch.setenv("DATA_ROOT", str(module_data_root))
    _, run = sweeps
    report = Path(summary_of(run)["report"])
    secret = module_data_root / "secret.txt"
    secret.write_text("not the run's")
    aside = report.with_name("report.md.aside")
    report.rename(aside)
    report.symlink_to(secret)
    try:
        html = reader.get(view(run)).text
        assert 'id="sweep-report"' not in html and 'id="leaderboard"' in html
        answer = reader.get(view(run) + "/files/report.md")
        assert answer.status_code == 404 and "not the run's" not in answer.text
        assert answer.headers["x-content-type-options"] == "nosniff"
    finally:
        report.unlink()
        aside.rename(report)


def test_a_run_that_is_not_a_sweep_has_no_sweep_section(airflow_db, tmp_path):
    from airflow.utils.session import create_session
    from operators.kit import runview

    with create_session() as session:
        assert runview.sweep_data(session, "units_of_work", "no-such-run", runview.RunFiles(str(tmp_path))) is None
