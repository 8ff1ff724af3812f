"""A person's path through the Airflow UI, in headless Chromium, against `make up`'s stack.

1. logs in; 2. triggers a small pricing run from the form (defaults, a small synthetic dataset, review always);
3. answers the approval in the UI; 4. opens the run view and checks its numbers against the run's files;
5. clears the one failed shard of a units_of_work run from the UI and checks that only it ran again.
Each step leaves a screenshot in the folder printed at the start. The REST API is used only to wait and to read.
"""
from __future__ import annotations

import json
import time
from urllib.parse import quote

import httpx
import pytest

RUN_TIMEOUT_S = 600
PRICING = "pricing_optimization"
ENGINE = "units_of_work"


class Api:
    def __init__(self, stack):
        token = httpx.post(f"{stack.base_url}/auth/token", json={"username": "admin", "password": stack.password},
                           timeout=30).json()["access_token"]
        self.client = httpx.Client(base_url=stack.base_url, headers={"Authorization": f"Bearer {token}"}, timeout=30)

    def get(self, path: str, **params):
        response = self.client.get(path, params=params)
        response.raise_for_status()
        return response.json()

    def runs(self, dag_id: str) -> list[dict]:
        return self.get(f"/api/v2/dags/{dag_id}/dagRuns", order_by="-run_after", limit=5)["dag_runs"]

    def task_instances(self, dag_id: str, run_id: str) -> list[dict]:
        return self.get(f"/api/v2/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}/taskInstances",
                        limit=100)["task_instances"]

    def wait(self, what: str, check, timeout: float = RUN_TIMEOUT_S, interval: float = 3):
        deadline = time.monotonic() + timeout
        while True:
            found = check()
            if found:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"gave up waiting for {what} after {timeout:.0f} s")
            time.sleep(interval)


def run_page(stack, dag_id: str, run_id: str, tail: str = "") -> str:
    return f"{stack.base_url}/dags/{dag_id}/runs/{quote(run_id, safe='')}{tail}"


def state_of(api: Api, dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> str | None:
    for ti in api.task_instances(dag_id, run_id):
        if ti["task_id"] == task_id and ti["map_index"] == map_index:
            return ti["state"]
    return None


@pytest.fixture(scope="module")
def page(browser, stack, shots):
    context = browser.new_context(viewport={"width": 1440, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(60_000)
    page.goto(stack.base_url + "/")
    page.locator("input[name=username]").fill("admin")
    page.locator("input[type=password]").fill(stack.password)
    page.locator("button[type=submit]").click()
    page.wait_for_url(lambda url: "/auth/login" not in url)
    page.screenshot(path=str(shots / "01-logged-in.png"))
    yield page
    context.close()


@pytest.fixture(scope="module")
def api(stack, page):
    return Api(stack)


def set_field(dialog, name: str, value: str) -> None:
    field = dialog.locator(f"input[name='element_{name}'], textarea[name='element_{name}'], #element_{name} input").first
    field.fill(value)
    field.press("Tab")


def choose(page, dialog, name: str, option: str) -> None:
    dialog.locator(f"#element_{name}").click()
    page.get_by_role("option", name=option, exact=True).click()


def test_a_pricing_run_triggered_from_the_form_is_approved_in_the_ui_and_its_run_view_matches_its_files(
        page, api, stack, shots):
    earlier = {run["dag_run_id"] for run in api.runs(PRICING)}
    page.goto(f"{stack.base_url}/dags/{PRICING}")
    page.get_by_role("button", name="Trigger").first.click()
    dialog = page.get_by_role("dialog")
    dialog.wait_for()
    set_field(dialog, "dataset_rows", "20000")
    set_field(dialog, "dataset_units", "300")
    choose(page, dialog, "review", "always")
    page.screenshot(path=str(shots / "02-trigger-form.png"), full_page=True)
    dialog.get_by_role("button", name="Trigger").click()
    run = api.wait("the pricing run", lambda: next((r for r in api.runs(PRICING) if r["dag_run_id"] not in earlier),
                                                   None), timeout=60)
    run_id = run["dag_run_id"]

    asking = ("awaiting_input", "deferred")
    api.wait("the approval", lambda: state_of(api, PRICING, run_id, "ask_reviewer") in (*asking, "failed",
                                                                                       "upstream_failed"))
    assert state_of(api, PRICING, run_id, "ask_reviewer") in asking, api.task_instances(PRICING, run_id)
    page.goto(run_page(stack, PRICING, run_id, "/tasks/ask_reviewer/required_actions"))
    page.get_by_role("button", name="Approve").wait_for()
    body = page.get_by_text("Run view: batches, dead letters, version, cost")
    assert body.count() >= 1  # the approval page links to the run view
    page.screenshot(path=str(shots / "03-approval.png"), full_page=True)
    page.get_by_role("button", name="Approve").click()
    api.wait("the run to end", lambda: api.get(f"/api/v2/dags/{PRICING}/dagRuns/{quote(run_id, safe='')}")["state"]
             in ("success", "failed"))
    final = api.get(f"/api/v2/dags/{PRICING}/dagRuns/{quote(run_id, safe='')}")
    assert final["state"] == "success"
    assert final["note"].startswith(f"{final_batches(stack, PRICING, run_id)} batches:")

    page.goto(run_page(stack, PRICING, run_id, "/plugin/airbatch-run-view"))
    frame = page.frame_locator("iframe[title='Run view']")
    frame.locator("#note").wait_for()
    time.sleep(1)
    page.screenshot(path=str(shots / "04-run-view.png"), full_page=True)
    data = api.get(f"/airbatch/runs/{PRICING}/{quote(run_id, safe='')}/data.json")
    run_folder = run_folder_of(stack, PRICING, run_id) / "results"
    results = [json.loads(p.read_text()) for p in sorted(run_folder.glob("shard-*.json"))]
    batches = [b for r in results for b in r["batches"]]
    assert data["counts"]["batches"] == len(batches)
    assert data["counts"]["done"] == sum(1 for b in batches if b["status"] == "succeeded")
    assert data["counts"]["cached"] == sum(1 for b in batches if b["status"] == "cached")
    cost = json.loads((run_folder.parent / "cost.json").read_text())
    assert data["cost"]["cost"] == pytest.approx(cost["cost"])
    assert data["version"]["status"] == "Approved" and data["version"]["decided_by"] == "person:admin"
    text = frame.locator("body").inner_text()
    assert data["note"] in text and data["version"]["version"] in text and "Approved" in text
    assert f"{len(batches):,}" in text and "estimate" in text
    report = frame.frame_locator("iframe[title='report']").locator("img").first
    report.wait_for()  # the report's plots, inline
    frame.locator("#cost").scroll_into_view_if_needed()
    page.screenshot(path=str(shots / "05-run-view-cost.png"), full_page=True)


def run_folder_of(stack, dag_id: str, run_id: str):
    from operators.kit.engine import safe_name

    return stack.data_root / "runs" / safe_name(dag_id) / safe_name(run_id)


def final_batches(stack, dag_id: str, run_id: str) -> str:
    run_folder = run_folder_of(stack, dag_id, run_id) / "results"
    return f"{sum(len(json.loads(p.read_text())['batches']) for p in run_folder.glob('shard-*.json')):,}"


def test_clearing_the_failed_shard_of_a_run_in_the_ui_reruns_only_that_shard(page, api, stack, shots):
    conf = {"units": 200, "bucket_count": 20, "batches_per_shard": 10, "fail_units": ["u000007"]}
    response = api.client.post(f"/api/v2/dags/{ENGINE}/dagRuns", json={"logical_date": None, "conf": conf})
    response.raise_for_status()
    run_id = response.json()["dag_run_id"]
    api.wait("the units_of_work run to fail", lambda: api.get(
        f"/api/v2/dags/{ENGINE}/dagRuns/{quote(run_id, safe='')}")["state"] == "failed")
    shards = {ti["map_index"]: ti for ti in api.task_instances(ENGINE, run_id) if ti["task_id"] == "run_shard"}
    [failed] = [i for i, ti in shards.items() if ti["state"] == "failed"]
    [other] = [i for i, ti in shards.items() if ti["state"] == "success"]
    tries = {i: ti["try_number"] for i, ti in shards.items()}

    page.goto(run_page(stack, ENGINE, run_id, f"/tasks/run_shard/mapped/{failed}/plugin/airbatch-shard-view"))
    shard_view = page.frame_locator("iframe[title='Shard view']")
    shard_view.get_by_text(f"Shard {failed} only").wait_for()
    assert "bad_data" in shard_view.locator("body").inner_text()
    page.screenshot(path=str(shots / "06-failed-shard-view.png"), full_page=True)

    page.goto(run_page(stack, ENGINE, run_id, f"/tasks/run_shard/mapped/{failed}"))
    page.get_by_role("button", name="Press shift+c to clear").first.click()
    dialog = page.get_by_role("dialog")
    dialog.wait_for()
    page.screenshot(path=str(shots / "07-clear-dialog.png"), full_page=True)
    dialog.get_by_role("button", name="Confirm").click()
    api.wait("the cleared shard to run again", lambda: api.get(
        f"/api/v2/dags/{ENGINE}/dagRuns/{quote(run_id, safe='')}")["state"] in ("success", "failed")
        and next(ti for ti in api.task_instances(ENGINE, run_id)
                 if ti["task_id"] == "run_shard" and ti["map_index"] == failed)["try_number"] > tries[failed])
    after = {ti["map_index"]: ti for ti in api.task_instances(ENGINE, run_id) if ti["task_id"] == "run_shard"}
    assert after[failed]["try_number"] == tries[failed] + 1
    assert after[other]["try_number"] == tries[other] and after[other]["state"] == "success"
    page.goto(run_page(stack, ENGINE, run_id))
    page.wait_for_timeout(2000)
    page.screenshot(path=str(shots / "08-after-clear.png"), full_page=True)
