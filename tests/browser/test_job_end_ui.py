"""Headless Chromium on a job page left open while a tiny LoRA run trains: when the run ends, the page shows what
the end changed without a reload (checkpoints with the rotated ones gone, the export panel's final output, the
Playground link), and its chart carries the base model's step-0 evaluation. Screenshot: job-ended-live.png."""

import re
from pathlib import Path

import pytest

from tests.browser.test_dashboard import SHOTS, page
from tests.browser.test_jobs_ui import login
from tests.browser.test_new_job_wizard import setup_data
from tests.support import StudioProcess

pytestmark = pytest.mark.browser
__all__ = ["page"]  # fixture shared with the dashboard test

MAX_STEPS = 12
# Checkpoints at 4, 8 and 12, one kept: the page must end up listing checkpoint-12 alone.
HP = {"max_length": 256, "batch_size": 4, "learning_rate": 0.002, "max_steps": MAX_STEPS, "eval_steps": 4,
      "checkpoint_steps": 4, "keep_checkpoints": 1, "validation_fraction": 0.2, "lora_r": 4}  # fmt: skip
NUMBER = re.compile(r"^\d+(\.\d+)?(e-?\d+)?$")


def test_open_job_page_follows_the_run_to_its_end(page, studio: StudioProcess, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect

    login(page, studio)
    with studio.client() as client:
        dataset_id, model_id = setup_data(client, tmp_path)
        body = {"name": "followed", "kind": "finetune", "dataset_id": dataset_id, "base_model": str(model_id),
                "method": "lora", "objective": "sft", "hyperparameters": HP}  # fmt: skip
        res = client.post("/api/jobs", json=body)
        assert res.status_code == 201, res.text
        job_id = int(res.json()["id"])
    page.goto(f"/jobs/{job_id}")
    # The premise: the page was rendered before the run ended (a tiny run still takes seconds to load and train).
    rendered = page.evaluate("JSON.parse(document.getElementById('job-data').textContent).status")
    assert rendered in ("queued", "running"), rendered
    expect(page.locator("#job-total")).to_have_text(str(MAX_STEPS))  # "0 / 12" while queued, not "0 / ?"
    expect(page.locator("#job-playground")).to_be_hidden()

    expect(page.locator("#job-status")).to_have_text(re.compile("succeeded|failed"), timeout=240_000)
    assert page.locator("#job-status").text_content() == "succeeded", page.locator("#job-error").text_content()
    expect(page.locator("#job-playground")).to_be_visible()
    checkpoints = page.locator("#job-checkpoints li[data-checkpoint]")
    expect(checkpoints).to_have_count(1)
    expect(checkpoints.first).to_have_attribute("data-checkpoint", f"checkpoint-{MAX_STEPS}")
    final = page.locator("#export-source option").first
    expect(final).to_have_text("Final output")
    expect(final).to_be_enabled()
    expect(page.locator("#export-source option")).to_have_count(2)  # the final output and checkpoint-12
    # Fine-tuned: the base model was evaluated before the first step, and the chart says so.
    expect(page.locator("#loss-chart")).to_have_attribute("data-base-eval", NUMBER)
    expect(page.locator("#chart-summary")).to_contain_text("base model")
    expect(page.locator("#job-resume")).to_be_hidden()
    page.screenshot(path=str(SHOTS / "job-ended-live.png"), full_page=True)
