"""Headless Chromium through the job page's Export panel: a checkpoint of a LoRA job merged as float16, its
progress followed live to the download, the zip checked, and the export still listed after a reload.
Screenshots land in test-output/screenshots/ (job-export.png, job-export-phone.png)."""

import re
import zipfile
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.browser.test_dashboard import SHOTS, page, shot
from tests.browser.test_new_job_wizard import setup_data
from tests.support import StudioProcess

pytestmark = pytest.mark.browser
__all__ = ["page"]  # fixture shared with the dashboard test

HP = {"max_length": 256, "batch_size": 8, "learning_rate": 0.002}
# Collects every progress line the panel shows, so the test knows the bar was there before the download was.
WATCH_PROGRESS = """() => {
  window.exportProgress = [];
  new MutationObserver(() => document.querySelectorAll('#export-list .export-progress-text')
    .forEach((el) => window.exportProgress.push(el.textContent)))
    .observe(document.getElementById('export-list'), {childList: true, subtree: true});
}"""


def _run(studio: StudioProcess, client: httpx.Client, body: dict[str, Any]) -> int:
    res = client.post("/api/jobs", json=body)
    assert res.status_code == 201, res.text
    job_id = int(res.json()["id"])
    job = studio.wait_job(client, job_id, ("succeeded", "failed"), timeout=240)
    assert job["status"] == "succeeded", studio.logs()
    return job_id


def _lora_job(studio: StudioProcess, tmp_path: Path) -> int:
    """A LoRA SFT job with checkpoints at steps 3 and 6, on a tiny Llama uploaded as a zip."""
    with studio.client() as client:
        dataset_id, model_id = setup_data(client, tmp_path)
        hp = {**HP, "max_steps": 6, "checkpoint_steps": 3, "lora_r": 4}
        body = {"name": "export-me", "kind": "finetune", "dataset_id": dataset_id, "base_model": str(model_id),
                "method": "lora", "objective": "sft", "hyperparameters": hp}  # fmt: skip
        return _run(studio, client, body)


def test_export_a_checkpoint_merged_as_float16(page, studio: StudioProcess, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect

    job_id = _lora_job(studio, tmp_path)
    page.goto("/login")
    page.fill("#login-email", studio.email)
    page.fill("#login-password", studio.password)
    page.click("#login-submit")
    expect(page).to_have_url(re.compile(r"/jobs$"))

    page.goto(f"/jobs/{job_id}")
    expect(page.locator("#export-list")).to_contain_text("No exports yet")
    # Only the forms a LoRA job's weights can take, and its checkpoints beside the final output.
    formats = page.locator("#export-format option").evaluate_all("o => o.map(x => x.value)")
    assert formats == ["merged", "adapter", "gguf"]
    # GGUF offers its own types in the precision list, the float dtypes come back with another format.
    shown = "o => o.filter(x => !x.hidden && !x.disabled).map(x => x.value)"
    page.select_option("#export-format", "gguf")
    assert page.locator("#export-dtype option").evaluate_all(shown) == ["f16", "bf16", "q8_0", "q4_0"]
    page.select_option("#export-format", "adapter")
    assert page.locator("#export-dtype option").evaluate_all(shown) == ["float32", "float16", "bfloat16"]
    expect(page.locator("#export-source option[value='checkpoint-3']")).to_have_count(1)
    expect(page.locator("#export-source option[value='checkpoint-6']")).to_have_count(1)
    page.select_option("#export-source", "checkpoint-3")
    page.select_option("#export-format", "merged")
    page.select_option("#export-dtype", "float16")
    page.evaluate(WATCH_PROGRESS)
    page.focus("#export-submit")
    page.keyboard.press("Enter")  # keyboard only

    item = page.locator("#export-list li.export-item").first
    expect(item).to_contain_text("checkpoint-3 · merged model · float16")
    expect(item).to_have_attribute("data-status", "done", timeout=90_000)
    seen = page.evaluate("window.exportProgress")
    assert seen and any(re.search(r"Queued|Loading|Merging|Saving|Zipping", text) for text in seen), seen
    expect(page.locator("#export-error")).to_be_hidden()
    link = item.get_by_role("link", name="Download checkpoint-3-merged-float16.zip")
    shot(page, "job-export")

    with page.expect_download() as download:
        link.click()
    saved = tmp_path / "export.zip"
    download.value.save_as(saved)
    with zipfile.ZipFile(saved) as zf:
        names = zf.namelist()
    assert "config.json" in names and any(n.endswith(".safetensors") for n in names), names

    # A reload shows the same export, done, with its download.
    page.reload()
    again = page.locator("#export-list li.export-item")
    expect(again).to_have_count(1)
    expect(again.first).to_have_attribute("data-status", "done")
    expect(again.first.get_by_role("link", name="Download checkpoint-3-merged-float16.zip")).to_be_visible()

    # Asking for the same export again returns the finished one instead of redoing it.
    page.select_option("#export-source", "checkpoint-3")
    page.select_option("#export-format", "merged")
    page.select_option("#export-dtype", "float16")
    posted = "/exports"
    with page.expect_response(lambda r: r.url.endswith(posted) and r.request.method == "POST") as response:
        page.click("#export-submit")
    assert response.value.status == 200
    expect(again).to_have_count(1)

    page.set_viewport_size({"width": 390, "height": 844})  # a phone: the form and the list stack
    panel = page.locator("#job-export")
    panel.scroll_into_view_if_needed()
    box = panel.bounding_box()
    assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 390, box
    assert panel.evaluate("el => el.scrollWidth <= el.clientWidth")
    panel.screenshot(path=str(SHOTS / "job-export-phone.png"))
