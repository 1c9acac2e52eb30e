"""Headless Chromium through the new-job wizard: Next refuses an empty dataset, the steps walked with the keyboard
and the mouse, Back keeps what was chosen, the estimate carries the dataset's dry run once the analysis worker
has counted the tokens, a 422 from the server opens the step that holds the field, and the job launches.
Viewport screenshots of each step (taken right before a click) land in test-output/screenshots/."""

import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.browser.test_dashboard import FIXTURES, SHOTS, page
from tests.browser.test_jobs_ui import login
from tests.browser.test_models_ui import _tiny_model, _zip_dir
from tests.support import StudioProcess

pytestmark = pytest.mark.browser
__all__ = ["page"]  # fixture shared with the dashboard test


def view(page: Any, name: str) -> None:
    page.screenshot(path=str(SHOTS / f"wizard-{name}.png"))


def on_step(page: Any, step: str) -> None:
    from playwright.sync_api import expect

    expect(page.locator(f"#step-{step}")).to_be_visible()
    expect(page.locator(f"#wizard-tab-{step}")).to_have_attribute("aria-current", "step")


def setup_data(client: httpx.Client, tmp_path: Path) -> tuple[int, int]:
    """(alpaca dataset id, base model id): instruction data and a tiny Llama uploaded as a zip (ready at once)."""
    alpaca = (FIXTURES / "alpaca_small.json").read_bytes()
    res = client.post("/api/datasets", files={"file": ("alpaca_small.json", alpaca)})
    assert res.status_code == 201, res.text
    archive = _zip_dir(_tiny_model(tmp_path / "tiny-llama"), tmp_path / "tiny-llama.zip")
    model = client.post("/api/models", files={"file": ("tiny-llama.zip", archive.read_bytes())}, data={"name": "tiny"})
    assert model.status_code == 201, model.text
    return int(res.json()["id"]), int(model.json()["id"])


def test_wizard_steps_dry_run_422_and_launch(page, studio: StudioProcess, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect

    stats_asks: list[str] = []  # the POSTs that ask for statistics (a GET would only read them)
    page.on("request", lambda r: stats_asks.append(r.url) if "/stats?" in r.url and r.method == "POST" else None)
    login(page, studio)
    # No dataset yet: Next on the data step refuses, with the same message the form always gave.
    page.goto("/jobs/new")
    on_step(page, "kind")
    expect(page.locator("#job-estimate")).to_be_hidden()
    expect(page.locator("#wizard-tab-settings")).to_be_disabled()  # not reached yet
    view(page, "1-kind")
    page.click("#wizard-next")
    on_step(page, "data")
    view(page, "2-data-empty")
    page.click("#wizard-next")
    on_step(page, "data")
    expect(page.locator("#job-dataset-error")).to_have_text("Upload a dataset first.")
    expect(page.locator("#job-dataset")).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#wizard-tab-data")).to_have_class(re.compile("has-error"))

    client = studio.client()
    dataset_id, model_id = setup_data(client, tmp_path)

    # The keyboard: Enter moves on from a choice, the method step is there for a fine-tune.
    page.goto("/jobs/new")
    on_step(page, "kind")
    page.focus("#job-kind-finetune")
    page.keyboard.press("Space")
    expect(page.locator("#job-kind-finetune")).to_be_checked()
    expect(page.locator("li[data-step-item='method']")).to_be_visible()
    page.keyboard.press("Enter")
    on_step(page, "data")
    expect(page.locator("#step-data-title")).to_be_focused()
    expect(page.locator("#job-dataset")).to_have_value(str(dataset_id))
    page.fill("#job-watch-prompts", "Give three tips for staying healthy.")
    page.focus("#job-dataset")
    view(page, "2-data")
    page.keyboard.press("Enter")
    on_step(page, "model")
    expect(page.locator("#job-base-model")).to_have_value(str(model_id))
    page.focus("#job-base-model")
    view(page, "3-model")
    page.keyboard.press("Enter")
    on_step(page, "method")
    expect(page.locator("#job-objective")).to_have_value("sft")  # from the dataset's shape
    page.focus("#job-method")
    view(page, "4-method")
    page.keyboard.press("Enter")
    on_step(page, "settings")
    expect(page.locator("#job-estimate")).to_be_visible()
    page.fill("#hp-max_steps", "4")
    page.fill("#hp-max_length", "256")

    # The mouse: Back keeps every value; a visited step is one click away in the indicator.
    page.click("#wizard-back")
    on_step(page, "method")
    expect(page.locator("#job-estimate")).to_be_hidden()
    page.click("#wizard-tab-data")
    on_step(page, "data")
    expect(page.locator("#job-watch-prompts")).to_have_value("Give three tips for staying healthy.")
    view(page, "back-to-data")
    page.click("#wizard-tab-settings")
    on_step(page, "settings")
    expect(page.locator("#hp-max_steps")).to_have_value("4")
    expect(page.locator("#hp-max_length")).to_have_value("256")

    # The dry run: no statistics yet, so the page asks the worker to count (once: then it follows the
    # analysis's stream), then the estimate is exact.
    dry_run = page.locator("#est-dry-run")
    expect(dry_run).to_have_attribute("data-state", "done", timeout=90_000)
    # Once for these settings. (On a busy machine the step's first estimate can go out before the fills above
    # land, and count the default max_length too: that is a different dry run, not a second ask.)
    assert len([url for url in stats_asks if "max_length=256&" in url]) == 1, stats_asks
    expect(dry_run).to_contain_text(re.compile(r"Dry run: [\d,]+ trained of [\d,]+ tokens \([\d,]+ masked\)"))
    expect(dry_run).to_contain_text("records truncated")
    expect(dry_run).to_contain_text("supervised tokens lost to truncation")
    expect(page.locator("#est-tokens-epoch")).not_to_contain_text("approx")
    expect(page.locator("#est-steps")).to_have_text("4")
    view(page, "5-settings")
    stats = client.get(
        f"/api/datasets/{dataset_id}/stats", params={"base_model": model_id, "objective": "sft", "max_length": 256}
    ).json()
    assert stats["status"] == "done"
    assert f"{stats['result']['supervised_tokens']:,} trained of {stats['result']['tokens']:,} tokens" in (
        dry_run.text_content() or ""
    )

    # A module name the server refuses: the 422 opens the settings step and marks the field.
    page.fill("#mc-lora-target_modules", "q-proj")
    page.click("#wizard-next")
    on_step(page, "review")
    summary = page.locator("#review-summary")
    expect(summary).to_contain_text("alpaca_small")
    expect(summary).to_contain_text("tiny")
    expect(summary).to_contain_text("4 steps")
    expect(page.locator("#job-estimate")).to_be_visible()
    expect(page.locator("#job-submit")).to_be_visible()
    page.fill("#job-name", "wizard-lora")
    view(page, "6-review")
    page.click("#job-submit")
    on_step(page, "settings")
    field = page.locator("#mc-lora-target_modules")
    expect(field).to_have_attribute("aria-invalid", "true")
    expect(field).to_be_focused()
    expect(page.locator("#mc-lora-target_modules-error")).to_contain_text("not a module name")
    expect(page.locator("#job-form-error")).to_contain_text("method_config.target_modules")
    expect(page.locator("#wizard-tab-settings")).to_have_class(re.compile("has-error"))
    view(page, "422-settings")

    # Fixed, Enter moves to the review; Enter in the name launches.
    field.fill("q_proj, v_proj")
    field.press("Enter")
    on_step(page, "review")
    expect(page.locator("#est-dry-run")).to_have_attribute("data-state", "done")
    view(page, "6-review-fixed")
    page.press("#job-name", "Enter")
    page.wait_for_url(re.compile(r"/jobs/\d+$"))
    job = client.get(f"/api/jobs/{int(page.url.rsplit('/', 1)[1])}").json()
    assert (job["name"], job["kind"], job["method"], job["objective"]) == ("wizard-lora", "finetune", "lora", "sft")
    assert job["method_config"]["target_modules"] == ["q_proj", "v_proj"] and job["method_config"]["r"] == 8
    assert job["hyperparameters"]["max_steps"] == 4 and job["watch_prompts"] == ["Give three tips for staying healthy."]


def test_wizard_at_phone_width_and_deep_links(page, studio: StudioProcess, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect

    client = studio.client()
    dataset_id, model_id = setup_data(client, tmp_path)
    login(page, studio)
    page.set_viewport_size({"width": 390, "height": 844})
    page.goto(f"/jobs/new?kind=pretrain&dataset_id={dataset_id}&base_model={model_id}")
    on_step(page, "kind")
    expect(page.locator("#job-kind-pretrain")).to_be_checked()
    expect(page.locator("li[data-step-item='method']")).to_be_hidden()  # pretraining has no method step
    wide = page.evaluate("() => document.documentElement.scrollWidth > window.innerWidth")
    assert not wide, "the wizard overflows a phone's width"
    view(page, "phone-kind")
    page.click("#wizard-next")
    # Pretraining needs raw text: the alpaca file is refused on the data step.
    page.click("#wizard-next")
    on_step(page, "data")
    expect(page.locator("#job-dataset-error")).to_contain_text("Pretraining needs raw text")
    view(page, "phone-data-refused")
    page.click("#wizard-tab-kind")
    page.check("#job-kind-finetune")
    page.click("#wizard-next")
    page.click("#wizard-next")
    on_step(page, "model")
    expect(page.locator("#job-base-model")).to_have_value(str(model_id))  # from the link
    assert not page.evaluate("() => document.documentElement.scrollWidth > window.innerWidth")
    view(page, "phone-model")
