"""Headless Chromium through the jobs list and the job page: filter, sort and live status on the list; log scale,
smoothing and zoom on the charts (read back from Chart.js); resume from a chosen checkpoint; clone and edit; the
settings presets. Screenshots land in test-output/screenshots/."""

import re
from typing import Any

import httpx
import pytest

from tests.browser.test_dashboard import FIXTURES, SHOTS, page, shot
from tests.e2e.test_job_control import wait_for_step
from tests.support import StudioProcess

pytestmark = pytest.mark.browser
__all__ = ["page"]  # fixture shared with the dashboard test

HP = {"max_length": 64, "batch_size": 8, "warmup_steps": 2, "logging_steps": 1}


def login(page: Any, studio: StudioProcess) -> None:
    page.goto("/login")
    page.fill("#login-email", studio.email)
    page.fill("#login-password", studio.password)
    page.click("#login-submit")
    page.wait_for_url(re.compile(r"/jobs"))


def submit(client: httpx.Client, dataset_id: int, name: str, **hp: object) -> dict:
    body = {"kind": "pretrain", "architecture": "tiny", "dataset_id": dataset_id, "name": name}
    res = client.post("/api/jobs", json={**body, "hyperparameters": {**HP, **hp}})
    assert res.status_code == 201, res.text
    return res.json()


def upload(client: httpx.Client) -> int:
    res = client.post("/api/datasets", files={"file": ("tiny.txt", (FIXTURES / "tiny.txt").read_bytes())})
    assert res.status_code == 201, res.text
    return int(res.json()["id"])


def visible_names(page: Any) -> list[str]:
    return page.eval_on_selector_all("#job-table tbody tr:not([hidden])", "rows => rows.map(r => r.dataset.name)")  # type: ignore[no-any-return]


def test_jobs_list_filters_sorts_and_updates_live(page, studio: StudioProcess) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect

    client = studio.client()
    dataset_id = upload(client)
    # Two runs whose final losses differ a lot: a learning rate 20x higher ends far lower after the same steps.
    fast = submit(client, dataset_id, "alpha-fast", max_steps=30, learning_rate=2e-3)
    slow = submit(client, dataset_id, "beta-slow", max_steps=30, learning_rate=1e-4)
    login(page, studio)
    expect(page.locator("#job-table tbody tr")).to_have_count(2)
    assert page.locator(f'tr[data-job-id="{slow["id"]}"] .badge').get_attribute("data-status") in ("queued", "running")
    # Live: both finish while the page stays open (no reload), their losses and durations filled in.
    expect(page.locator(f'tr[data-job-id="{slow["id"]}"] .badge')).to_have_attribute(
        "data-status", "succeeded", timeout=180_000
    )
    expect(page.locator(f'tr[data-job-id="{fast["id"]}"] .badge')).to_have_attribute("data-status", "succeeded")
    expect(page.locator(f'tr[data-job-id="{slow["id"]}"] .loss-cell')).not_to_have_text("—")
    expect(page.locator(f'tr[data-job-id="{slow["id"]}"] .duration-cell')).not_to_have_text("—")
    shot(page, "jobs-list")

    # Filter by name, then by a status no job has: the "no match" state, and a way out of it.
    page.fill("#job-filter-text", "alp")
    assert visible_names(page) == ["alpha-fast"]
    expect(page.locator("#job-count")).to_have_text("1 of 2 jobs")
    assert "q=alp" in page.url  # the filter survives a reload
    page.fill("#job-filter-text", "")
    page.select_option("#job-filter-status", "failed")
    expect(page.locator("#jobs-filtered-empty")).to_be_visible()
    expect(page.locator("#job-table")).to_be_hidden()
    page.screenshot(path=str(SHOTS / "jobs-list-no-match.png"))
    page.click("#job-filter-clear")
    assert len(visible_names(page)) == 2
    page.select_option("#job-filter-kind", "finetune")
    assert visible_names(page) == []
    page.select_option("#job-filter-kind", "pretrain")
    assert len(visible_names(page)) == 2

    # Sort: newest first by default; by final loss ascending, then descending, with aria-sort saying so.
    assert visible_names(page) == ["beta-slow", "alpha-fast"]
    loss_header = page.locator('th[data-sort-key="loss"]')
    expect(loss_header).to_have_attribute("aria-sort", "none")
    page.screenshot(path=str(SHOTS / "jobs-list-sorting.png"))
    page.click('button[data-sort="loss"]')
    expect(loss_header).to_have_attribute("aria-sort", "ascending")
    losses = [client.get(f"/api/jobs/{j['id']}").json()["final_loss"] for j in (fast, slow)]
    assert losses[0] < losses[1]
    assert visible_names(page) == ["alpha-fast", "beta-slow"]
    # The keyboard works the header buttons too.
    page.focus('button[data-sort="loss"]')
    page.keyboard.press("Enter")
    expect(loss_header).to_have_attribute("aria-sort", "descending")
    assert visible_names(page) == ["beta-slow", "alpha-fast"]
    page.click('button[data-sort="name"]')
    expect(page.locator('th[data-sort-key="name"]')).to_have_attribute("aria-sort", "ascending")
    expect(loss_header).to_have_attribute("aria-sort", "none")
    assert visible_names(page) == ["alpha-fast", "beta-slow"]
    page.reload()  # sort and filter live in the URL
    expect(page.locator('th[data-sort-key="name"]')).to_have_attribute("aria-sort", "ascending")
    assert page.locator("#job-filter-kind").input_value() == "pretrain"

    # A job started elsewhere shows up on the open page without a reload.
    late = submit(client, dataset_id, "gamma-late", max_steps=5)
    expect(page.locator(f'tr[data-job-id="{late["id"]}"]')).to_be_visible(timeout=30_000)
    expect(page.locator(f'tr[data-job-id="{late["id"]}"] .badge')).to_have_attribute(
        "data-status", "succeeded", timeout=120_000
    )
    shot(page, "jobs-list-sorted")


CHART_STATE = """(id) => {
  const c = Chart.getChart(document.getElementById(id));
  const raw = c.data.datasets.find(d => d.role === "raw");
  const smoothed = c.data.datasets.find(d => d.role === "smoothed");
  return {
    yType: c.scales.y.type, xMin: c.options.scales.x.min ?? null, xMax: c.options.scales.x.max ?? null,
    scaleMin: c.scales.x.min, scaleMax: c.scales.x.max, rawHidden: !!raw.hidden,
    same: raw.data.every((p, i) => Math.abs(p.y - smoothed.data[i].y) < 1e-12),
    n: raw.data.length, steps: raw.data.map(p => p.x),
  };
}"""
PANEL_STATE = """() => {
  const c = Chart.getChart(document.querySelector('#metric-panels figure[data-metric="grad_norm"] canvas'));
  return {yType: c.scales.y.type, xMin: c.options.scales.x.min ?? null};
}"""


@pytest.mark.slow
def test_job_page_chart_controls_resume_from_checkpoint_clone_and_presets(page, studio: StudioProcess) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect

    client = studio.client()
    dataset_id = upload(client)
    job = submit(
        client,
        dataset_id,
        "charts",
        max_steps=80,
        learning_rate=2e-3,
        checkpoint_steps=10,
        keep_checkpoints=5,
        eval_steps=20,
    )
    wait_for_step(client, job["id"], 25)
    assert client.post(f"/api/jobs/{job['id']}/pause").status_code == 200
    paused = studio.wait_job(client, job["id"], ("paused", "succeeded", "failed"), timeout=120)
    assert paused["status"] == "paused", paused
    at = paused["current_step"]

    login(page, studio)
    page.goto(f"/jobs/{job['id']}")
    page.wait_for_function(f"() => Number(document.querySelector('#loss-chart').dataset.points) >= {at}")
    expect(page.locator('#metric-panels figure[data-metric="grad_norm"]')).to_be_visible()

    # Log scale: the loss chart's y axis and every panel's (all positive here) turn logarithmic.
    assert page.evaluate(CHART_STATE, "loss-chart")["yType"] == "linear"
    page.check("#chart-log")
    assert page.evaluate(CHART_STATE, "loss-chart")["yType"] == "logarithmic"
    assert page.evaluate(PANEL_STATE)["yType"] == "logarithmic"

    # Smoothing: 0 shows the raw curve alone; the maximum smooths it (the raw one stays, faint, behind).
    page.focus("#chart-smoothing")
    page.keyboard.press("Home")
    state = page.evaluate(CHART_STATE, "loss-chart")
    assert state["rawHidden"] and state["same"] and state["n"] == at
    expect(page.locator("#chart-smoothing-value")).to_have_text("0.00")
    page.keyboard.press("End")
    state = page.evaluate(CHART_STATE, "loss-chart")
    assert not state["rawHidden"] and not state["same"]

    # Zoom: drag across the middle of the chart; every chart shows that step range, "Reset zoom" undoes it.
    canvas = page.locator("#loss-chart")
    canvas.scroll_into_view_if_needed()
    area = page.evaluate("() => Chart.getChart(document.getElementById('loss-chart')).chartArea")
    box = canvas.bounding_box()
    y = box["y"] + (area["top"] + area["bottom"]) / 2
    left = box["x"] + area["left"] + (area["right"] - area["left"]) * 0.3
    right = box["x"] + area["left"] + (area["right"] - area["left"]) * 0.7
    page.mouse.move(left, y)
    page.mouse.down()
    page.mouse.move((left + right) / 2, y, steps=4)
    page.mouse.move(right, y, steps=4)
    page.mouse.up()
    zoomed = page.evaluate(CHART_STATE, "loss-chart")
    assert zoomed["xMin"] is not None and 0 < zoomed["xMin"] < zoomed["xMax"] < at
    assert page.evaluate(PANEL_STATE)["xMin"] == zoomed["xMin"]
    expect(page.locator("#chart-reset-zoom")).to_be_enabled()
    expect(page.locator("#chart-zoom-from")).to_have_value(str(zoomed["xMin"]))
    page.screenshot(path=str(SHOTS / "job-chart-zoomed.png"))
    page.click("#chart-reset-zoom")
    assert page.evaluate(CHART_STATE, "loss-chart")["xMin"] is None
    expect(page.locator("#chart-reset-zoom")).to_be_disabled()
    page.fill("#chart-zoom-from", "5")  # the keyboard way to zoom
    page.fill("#chart-zoom-to", "15")
    page.press("#chart-zoom-to", "Tab")
    assert (page.evaluate(CHART_STATE, "loss-chart")["xMin"], page.evaluate(CHART_STATE, "loss-chart")["xMax"]) == (
        5,
        15,
    )
    page.click("#chart-reset-zoom")
    page.uncheck("#chart-log")
    shot(page, "job-paused-charts")

    # Resume from an older checkpoint: the later points go, the run continues from there, one point per step.
    checkpoints = client.get(f"/api/jobs/{job['id']}/checkpoints").json()
    older = checkpoints[-2]
    assert older["step"] < at
    button = page.locator(f'#job-checkpoints button[data-checkpoint="{older["name"]}"]')
    expect(button).to_be_visible()
    page.once("dialog", lambda dialog: dialog.accept())  # "the metrics after step N are discarded"
    page.screenshot(path=str(SHOTS / "job-resume-from-checkpoint.png"))
    button.click()
    expect(page.locator("#job-status")).to_have_attribute("data-status", "succeeded", timeout=180_000)
    expect(button).to_be_hidden()
    page.wait_for_function("() => Number(document.querySelector('#loss-chart').dataset.points) >= 80")
    steps = page.evaluate(CHART_STATE, "loss-chart")["steps"]
    assert steps == list(range(1, 81))  # on the page's chart: one point per step, none from the dropped run
    events = page.locator("#job-events")
    expect(events).to_contain_text(f"resume queued from {older['name']}")
    expect(events).to_contain_text(f"dropped what came after step {older['step']}")
    shot(page, "job-resumed-from-checkpoint")

    # Clone and edit: the wizard opens at its review with every field of the job filled in.
    page.click("#job-clone-edit")
    page.wait_for_url(re.compile(rf"/jobs/new\?clone={job['id']}$"))
    expect(page.locator("#job-clone-note")).to_be_visible()
    expect(page.locator("#wizard-tab-review")).to_have_attribute("aria-current", "step")
    expect(page.locator("#job-name")).to_have_value("charts (clone)")
    expect(page.locator("#job-kind-pretrain")).to_be_checked()
    expect(page.locator("#job-dataset")).to_have_value(str(dataset_id))
    expect(page.locator("#job-architecture")).to_have_value("tiny")
    for field, value in (
        ("max_steps", "80"),
        ("learning_rate", "0.002"),
        ("checkpoint_steps", "10"),
        ("keep_checkpoints", "5"),
        ("eval_steps", "20"),
        ("max_length", "64"),
    ):
        expect(page.locator(f"#hp-{field}")).to_have_value(value)
    expect(page.locator("#hp-early_stopping_patience")).to_have_value("")
    expect(page.locator("#est-steps")).to_have_text("80")
    shot(page, "new-job-clone")

    # Presets fill the settings and the estimate follows (every step of a clone is one click away).
    page.click("#wizard-tab-settings")
    page.click("#preset-quick")
    expect(page.locator("#preset-quick")).to_have_attribute("aria-pressed", "true")
    expect(page.locator("#hp-max_steps")).to_have_value("60")
    expect(page.locator("#hp-learning_rate")).to_have_value("0.001")
    expect(page.locator("#hp-checkpoint_steps")).to_have_value("")
    expect(page.locator("#est-steps")).to_have_text("60")
    page.click("#preset-thorough")
    expect(page.locator("#hp-max_steps")).to_have_value("")
    expect(page.locator("#hp-epochs")).to_have_value("3")
    expect(page.locator("#hp-early_stopping_patience")).to_have_value("3")
    expect(page.locator("#est-steps")).not_to_have_text("60")
    page.click("#preset-quick")
    page.fill("#hp-max_steps", "12")  # a hand edit: the form is no longer the preset
    expect(page.locator("#preset-quick")).to_have_attribute("aria-pressed", "false")
    page.screenshot(path=str(SHOTS / "new-job-presets.png"))
    page.click("#wizard-next")
    page.click("#job-submit")
    page.wait_for_url(re.compile(r"/jobs/\d+$"))
    new_id = int(page.url.rsplit("/", 1)[1])
    created = client.get(f"/api/jobs/{new_id}").json()
    assert created["cloned_from_id"] == job["id"] and created["hyperparameters"]["max_steps"] == 12
    assert created["hyperparameters"]["learning_rate"] == 1e-3 and created["name"] == "charts (clone)"


def test_jobs_list_is_live_over_sse_without_polling(page, studio: StudioProcess) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect

    client = studio.client()
    dataset_id = upload(client)
    polled: list[str] = []
    page.on("request", lambda r: polled.append(r.url) if r.url.split("?")[0].endswith("/api/jobs") else None)
    login(page, studio)
    expect(page.locator("#jobs-empty")).to_be_visible()
    expect(page.locator("#job-table")).to_have_attribute("data-live", "open")
    # A job started elsewhere appears without a reload, then its status follows it to the end.
    job = submit(client, dataset_id, "appears-live", max_steps=400)
    row = page.locator(f'tr[data-job-id="{job["id"]}"]')
    expect(row).to_have_count(1, timeout=15_000)
    expect(page.locator("#jobs-empty")).to_be_hidden()

    # The compare page of a run in progress grows its curve without a reload, then stops following it.
    compare = page.context.new_page()
    compare.goto(f"/compare?ids={job['id']}")
    compare.select_option("#compare-y", "loss")
    expect(compare.locator("#compare-chart")).to_have_attribute("data-live", "open", timeout=30_000)
    count = "() => Chart.getChart(document.querySelector('#compare-chart')).data.datasets[0].data.length"
    compare.wait_for_function(f"() => ({count})() >= 2", timeout=60_000)
    first = compare.evaluate(count)
    compare.wait_for_function(f"() => ({count})() > {first}", timeout=60_000)
    shot(compare, "compare-live")

    assert client.post(f"/api/jobs/{job['id']}/cancel").status_code == 200
    expect(compare.locator("#compare-chart")).to_have_attribute("data-live", "closed", timeout=60_000)
    expect(compare.locator(f'.pick-status[data-job-id="{job["id"]}"]')).to_have_text("cancelled")
    compare.close()
    expect(row.locator(".badge")).to_have_attribute("data-status", "cancelled", timeout=60_000)
    shot(page, "jobs-list-live")
    assert polled == []  # every update came over the stream
