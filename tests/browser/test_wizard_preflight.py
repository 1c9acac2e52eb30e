"""Headless Chromium: the Review step shows the pre-flight check of the dataset's dry run as a blocking error (Start
waits), and a max_length that keeps the examples clears it."""

import json
from pathlib import Path

import pytest

from tests.browser.test_dashboard import page
from tests.browser.test_jobs_ui import login
from tests.browser.test_models_ui import _tiny_model, _zip_dir
from tests.browser.test_new_job_wizard import on_step, view
from tests.support import StudioProcess

pytestmark = pytest.mark.browser
__all__ = ["page"]  # fixture shared with the dashboard test

LONG = "Tell me everything about the owl, the fox, the field and the long quiet night. " * 4


def test_review_blocks_a_run_whose_examples_do_not_fit(page, studio: StudioProcess, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect

    client = studio.client()
    records = [{"prompt": LONG if i < 8 else "Name a bird.", "completion": "The owl."} for i in range(10)]
    body = "".join(json.dumps(r) + "\n" for r in records)
    dataset = client.post("/api/datasets", files={"file": ("long_prompts.jsonl", body.encode())})
    assert dataset.status_code == 201, dataset.text
    archive = _zip_dir(_tiny_model(tmp_path / "tiny-llama"), tmp_path / "tiny-llama.zip")
    model = client.post("/api/models", files={"file": ("tiny-llama.zip", archive.read_bytes())}, data={"name": "tiny"})
    assert model.status_code == 201, model.text

    login(page, studio)
    page.goto("/jobs/new")
    page.check("#job-kind-finetune")
    page.click("#wizard-next")
    on_step(page, "data")
    page.select_option("#job-dataset", str(dataset.json()["id"]))
    page.click("#wizard-next")
    on_step(page, "model")
    page.select_option("#job-base-model", str(model.json()["id"]))
    page.click("#wizard-next")
    on_step(page, "method")
    page.click("#wizard-next")
    on_step(page, "settings")
    page.fill("#hp-max_steps", "2")
    page.fill("#hp-max_length", "64")
    expect(page.locator("#est-dry-run")).to_have_attribute("data-state", "done", timeout=90_000)
    page.click("#wizard-next")
    on_step(page, "review")

    checks = page.locator("#review-checks")
    expect(checks).to_be_visible(timeout=30_000)
    expect(checks).to_contain_text("max_length: only 2 of 10 records fit in max_length=64: raise it to")
    expect(page.locator("#job-submit")).to_be_disabled()
    view(page, "review-preflight")

    # A longer max_length keeps them all: once its dry run is counted the check clears and Start is offered.
    page.click("#wizard-tab-settings")
    on_step(page, "settings")
    page.fill("#hp-max_length", "512")
    expect(page.locator("#est-dry-run")).to_have_attribute("data-state", "done", timeout=90_000)
    page.click("#wizard-tab-review")
    on_step(page, "review")
    expect(checks).to_be_hidden()
    expect(page.locator("#job-submit")).to_be_enabled()
