"""Headless Chromium through the pages a person uses: log in, upload, launch, watch the chart, download.

Screenshots of each page land in test-output/screenshots/.
"""

import os
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import StudioProcess

pytestmark = pytest.mark.browser

FIXTURES = Path(__file__).parent.parent / "fixtures"
SHOTS = Path(__file__).resolve().parent.parent.parent / "test-output" / "screenshots"
CHROMIUM = os.environ.get("STUDIO_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
def page(studio: StudioProcess) -> Iterator["object"]:
    if not os.access(CHROMIUM, os.X_OK):
        if os.environ.get("CI") == "true":
            pytest.fail(f"Chromium is required in CI ({CHROMIUM}); .ci/run installs it")
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        context = browser.new_context(
            base_url=studio.url, accept_downloads=True, viewport={"width": 1280, "height": 900}
        )
        context.set_default_timeout(30_000)
        yield context.new_page()
        context.close()
        browser.close()


def shot(page: "object", name: str) -> None:
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)  # type: ignore[attr-defined]


def test_login_upload_launch_watch_and_download(page, studio: StudioProcess, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect

    page.goto("/jobs")
    expect(page).to_have_url(re.compile(r"/login"))
    page.fill("#login-email", studio.email)
    page.fill("#login-password", "wrong-password")
    page.click("#login-submit")
    expect(page.locator("#login-error")).to_be_visible()
    shot(page, "login")
    page.fill("#login-email", studio.email)
    page.fill("#login-password", studio.password)
    page.click("#login-submit")
    expect(page).to_have_url(re.compile(r"/jobs$"))
    shot(page, "jobs-empty")

    # Upload with the file input: it is inspected first, then "Upload" follows the progress bar to its page.
    page.goto("/datasets")
    page.set_input_files("#upload-file", str(FIXTURES / "tiny.txt"))
    expect(page.locator("#upload-submit")).to_be_enabled()
    page.click("#upload-submit")
    page.wait_for_url(re.compile(r"/datasets/\d+$"))
    text_id = int(page.url.rsplit("/", 1)[1])
    expect(page.locator("#dataset-records")).to_contain_text("120")
    shot(page, "dataset")

    # A malformed file is refused with the line and problem shown.
    page.goto("/datasets")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"text": 5}\n')
    page.set_input_files("#upload-file", str(bad))
    expect(page.locator("#upload-error")).to_contain_text("line 2")
    expect(page.locator("#upload-submit")).to_be_disabled()
    shot(page, "datasets-error")

    # Drag-and-drop the alpaca file onto the drop zone.
    data = (FIXTURES / "alpaca_small.json").read_text()
    handle = page.evaluate_handle(
        """(text) => { const dt = new DataTransfer();
             dt.items.add(new File([text], 'alpaca_small.json', {type: 'application/json'})); return dt; }""",
        data,
    )
    page.dispatch_event("#upload-drop", "drop", {"dataTransfer": handle})
    expect(page.locator("#upload-submit")).to_be_enabled()
    page.click("#upload-submit")
    page.wait_for_url(re.compile(r"/datasets/\d+$"))
    alpaca_id = int(page.url.rsplit("/", 1)[1])
    assert alpaca_id != text_id

    # Launch a pretrain job from the form and watch the chart receive live points.
    # The wizard: kind → data → model → settings (pretraining has no method step) → review.
    page.goto(f"/jobs/new?dataset_id={text_id}")
    page.check("#job-kind-pretrain")
    page.click("#wizard-next")
    expect(page.locator("#job-dataset")).to_have_value(str(text_id))
    page.click("#wizard-next")
    page.select_option("#job-architecture", "tiny")
    page.click("#wizard-next")
    page.fill("#hp-max_steps", "150")
    page.fill("#hp-learning_rate", "0.002")
    page.fill("#hp-max_length", "64")
    page.click("#wizard-next")
    page.fill("#job-name", "browser-pretrain")
    # A viewport shot: right after a full-page screenshot Chromium's hit-testing is stale and the click is lost.
    page.screenshot(path=str(SHOTS / "new-job.png"))
    page.click("#job-submit")
    page.wait_for_url(re.compile(r"/jobs/\d+$"))
    pretrain_url = page.url
    expect(page.locator("#job-status")).to_have_attribute("data-status", "running", timeout=60_000)
    page.wait_for_function("() => Number(document.querySelector('#loss-chart').dataset.points) >= 5")
    # Points arrived while the run was still going: that is the live stream, not a reload.
    assert page.locator("#job-status").get_attribute("data-status") == "running"
    shot(page, "job-running")
    expect(page.locator("#job-status")).to_have_attribute("data-status", "succeeded", timeout=120_000)
    points = int(page.locator("#loss-chart").get_attribute("data-points") or 0)
    assert points >= 150
    page.reload()  # the whole curve comes back after a reload
    page.wait_for_function(f"() => Number(document.querySelector('#loss-chart').dataset.points) >= {points}")
    shot(page, "job-succeeded")

    # Fine-tune the pretrained model with LoRA on the alpaca data, then download the adapter.
    models = studio.client().get("/api/models").json()["items"]
    base_id = next(m["id"] for m in models if pretrain_url.endswith(f"/jobs/{m['job_id']}"))
    page.goto(f"/jobs/new?dataset_id={alpaca_id}")
    page.check("#job-kind-finetune")
    page.click("#wizard-next")
    page.click("#wizard-next")
    page.select_option("#job-base-model", str(base_id))
    page.click("#wizard-next")
    page.select_option("#job-method", "lora")
    page.select_option("#job-objective", "sft")
    page.click("#wizard-next")
    page.fill("#hp-max_steps", "10")
    page.fill("#hp-learning_rate", "0.002")
    page.fill("#hp-max_length", "128")  # some alpaca prompts take over 64 of the tiny tokenizer's tokens
    # The estimate follows the form: LoRA trains a sliver of the weights, for 10 steps.
    expect(page.locator("#est-steps")).to_have_text("10")
    expect(page.locator("#est-parameters")).not_to_have_text("—")
    page.click("#wizard-next")  # the review: the estimate again, beside a summary of the choices
    expect(page.locator("#review-summary")).to_contain_text("LoRA")
    page.screenshot(path=str(SHOTS / "new-job-estimate.png"))
    page.click("#job-submit")
    page.wait_for_url(re.compile(r"/jobs/\d+$"))
    expect(page.locator("#job-status")).to_have_attribute("data-status", "succeeded", timeout=120_000)
    link = page.locator("#job-artifacts a[download]", has_text="adapter.zip")
    expect(link).to_be_visible()
    shot(page, "job-finetune")
    with page.expect_download() as info:
        link.click()
    path = tmp_path / "adapter.zip"
    info.value.save_as(path)
    with zipfile.ZipFile(path) as zf:
        assert {"adapter_config.json", "adapter_model.safetensors"} <= set(zf.namelist())

    # Every logged quantity gets its own chart on the job page.
    expect(page.locator('#metric-panels figure[data-metric="tokens_per_second"]')).to_be_visible()

    page.goto("/jobs")
    expect(page.locator("#job-table tr[data-job-id]")).to_have_count(2)
    shot(page, "jobs")

    # Compare the from-scratch run with the fine-tune: curves, the trade-off in words, the settings diff.
    page.locator("#job-table input[name=ids]").nth(0).check()
    page.locator("#job-table input[name=ids]").nth(1).check()
    page.screenshot(path=str(SHOTS / "jobs-selected.png"))
    page.click("#compare-submit")
    page.wait_for_url(re.compile(r"/compare\?ids="))
    expect(page.locator("#compare-chart")).to_have_attribute("data-runs", "2")
    expect(page.locator("#compare-verdict")).to_contain_text("Pretrain vs fine-tune")
    # Their tokenizers differ: the verdict weighs bits per byte of validation text, not loss per token.
    expect(page.locator("#compare-verdict")).to_contain_text("bits per byte of validation text")
    expect(page.locator("#compare-summary")).to_contain_text("Training FLOPs")
    expect(page.locator("#compare-summary")).to_contain_text("Validation bits per byte")
    page.select_option("#compare-y", "eval_bits_per_byte")
    expect(page.locator("#compare-chart")).to_have_attribute("data-runs", "2")
    expect(page.locator("#compare-diff")).to_contain_text("kind")
    page.select_option("#compare-x", "flops")
    shot(page, "compare")

    page.goto("/workers")
    expect(page.locator('#worker-table tr[data-live="true"]')).not_to_have_count(0)
    shot(page, "workers")
    page.goto("/models")
    shot(page, "models")
