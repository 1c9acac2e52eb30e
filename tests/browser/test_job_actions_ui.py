"""Headless Chromium on the job page, with the buttons a person clicks: cancel a running job and watch the badge turn
without a reload, resume it from its last checkpoint with the earlier points still on the chart, pause it, resume it
again, and see it succeed with one point per step. Screenshots land in test-output/screenshots/."""

from typing import Any

import pytest

from tests.browser.test_dashboard import SHOTS, page
from tests.browser.test_every_page import FOCUS
from tests.browser.test_jobs_ui import login, submit, upload
from tests.support import StudioProcess

pytestmark = pytest.mark.browser
__all__ = ["page"]  # fixture shared with the dashboard test

# Room to spare: each click must land while the run is still going, however loaded the machine is.
MAX_STEPS = 80
EVERY = 5  # a checkpoint every 5 steps: a cancelled run resumes from the last one

# The training-loss points on the page's main chart, as (step, loss), read from Chart.js.
# The points are counted as they arrive and drawn at the next frame: wait for the chart itself to hold them.
DRAWN = """(n) => {
  const chart = Chart.getChart(document.getElementById('loss-chart'));
  const raw = chart && chart.data.datasets.find((d) => d.role === 'raw');
  return Boolean(raw) && raw.data.length >= n;
}"""
POINTS = """() => {
  const chart = Chart.getChart(document.getElementById('loss-chart'));
  const raw = chart.data.datasets.find((d) => d.role === 'raw');
  return raw.data.map((p) => [p.x, p.y]);
}"""


def points_beyond(page: Any, n: int, timeout: float = 120_000) -> None:
    page.wait_for_function(f"() => Number(document.querySelector('#loss-chart').dataset.points) > {n}", timeout=timeout)


def test_cancel_resume_pause_resume_from_the_job_page(page, studio: StudioProcess) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect

    client = studio.client()
    job = submit(client, upload(client), "click-me", max_steps=MAX_STEPS, checkpoint_steps=EVERY, keep_checkpoints=20)
    page.on("dialog", lambda dialog: dialog.accept())  # should a button ever ask "are you sure?"
    login(page, studio)
    page.goto(f"/jobs/{job['id']}")
    badge, events = page.locator("#job-status"), page.locator("#job-events")
    cancel, pause, resume = page.locator("#job-cancel"), page.locator("#job-pause"), page.locator("#job-resume")
    expect(badge).to_have_attribute("data-status", "running", timeout=120_000)
    points_beyond(page, EVERY + 1)  # past the first checkpoint

    # The keyboard reaches "Cancel job" from the skip link, with the focus ring showing; then a click cancels.
    page.keyboard.press("Tab")
    page.keyboard.press("Enter")
    for _ in range(10):
        page.keyboard.press("Tab")
        if page.evaluate("() => document.activeElement.id") == "job-cancel":
            break
    focus = page.evaluate(FOCUS)
    assert focus["id"] == "job-cancel" and focus["ring"], focus
    cancel.click()
    # Live: the badge turns, the log says why and the Resume button appears, all without a reload.
    expect(badge).to_have_attribute("data-status", "cancelled", timeout=60_000)
    expect(badge).to_have_text("cancelled")
    expect(events).to_contain_text("cancel requested")
    expect(events).to_contain_text("job cancelled")
    expect(resume).to_be_visible()
    expect(cancel).to_be_hidden()
    at_cancel = client.get(f"/api/jobs/{job['id']}").json()["current_step"]
    points_beyond(page, at_cancel - 1)  # the stream may deliver the last point just after the status
    before = page.evaluate(POINTS)
    stopped_at = before[-1][0]
    assert stopped_at < MAX_STEPS and [s for s, _ in before] == list(range(1, stopped_at + 1))
    page.screenshot(path=str(SHOTS / "job-cancelled.png"), full_page=True)

    # Resume: from the last checkpoint before the cancel; the points up to it stay on the chart, unchanged.
    checkpoint = client.get(f"/api/jobs/{job['id']}/checkpoints").json()[-1]["step"]
    assert 0 < checkpoint <= stopped_at
    resume.click()
    expect(events).to_contain_text(f"resume queued from checkpoint-{checkpoint}")
    expect(events).to_contain_text(f"resuming from checkpoint-{checkpoint}", timeout=60_000)
    expect(badge).to_have_attribute("data-status", "running", timeout=60_000)

    # Pause while it runs (at once: a tiny model's steps are quick), then Resume: it goes on from the checkpoint
    # the pause saved.
    expect(pause).to_be_visible()
    pause.click()
    expect(badge).to_have_attribute("data-status", "paused", timeout=60_000)
    expect(events).to_contain_text("pause requested")
    expect(resume).to_be_visible()
    expect(pause).to_be_hidden()
    paused_at = client.get(f"/api/jobs/{job['id']}").json()["current_step"]
    points_beyond(page, paused_at - 1)
    paused = page.evaluate(POINTS)
    assert paused[-1][0] == paused_at < MAX_STEPS
    assert paused[:checkpoint] == before[:checkpoint]  # the points up to the resumed checkpoint, unchanged
    page.screenshot(path=str(SHOTS / "job-paused.png"), full_page=True)
    resume.click()
    expect(events).to_contain_text(f"resuming from checkpoint-{paused_at}", timeout=60_000)
    expect(badge).to_have_attribute("data-status", "succeeded", timeout=180_000)
    page.wait_for_function(DRAWN, arg=MAX_STEPS)
    done = page.evaluate(POINTS)
    assert [s for s, _ in done] == list(range(1, MAX_STEPS + 1))  # one point per step across both resumes
    assert done[:paused_at] == paused  # nothing before the pause was redrawn differently
    expect(resume).to_be_hidden()
    page.screenshot(path=str(SHOTS / "job-resumed.png"), full_page=True)

    # After a reload the whole curve comes back from the server as it was drawn live.
    page.reload()
    page.wait_for_function(DRAWN, arg=MAX_STEPS)
    assert page.evaluate(POINTS) == done
    expect(badge).to_have_attribute("data-status", "succeeded")
