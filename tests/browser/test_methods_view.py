"""Headless Chromium through the Methods view: one small SFT dataset on a tiny Llama, three methods ticked (LoRA,
IA³, prompt tuning), their estimates and LoRA's share checked on this model before launch, then the three runs
followed live to the end, each row with its trainable share, time, throughput, eval loss and adapter size.
A screenshot lands in test-output/screenshots/methods-view.png."""

import re
from pathlib import Path
from typing import Any

import pytest

from tests.browser.test_dashboard import page, shot
from tests.browser.test_jobs_ui import login
from tests.browser.test_new_job_wizard import setup_data
from tests.support import StudioProcess

pytestmark = pytest.mark.browser
__all__ = ["page"]  # fixture shared with the dashboard test

METHODS = ("lora", "ia3", "prompt_tuning")
# What each run's column must show once it has ended: its share, time, throughput, eval loss and adapter size.
CELLS = {
    "trainable-percent": re.compile(r"^[0-9.e-]+%$"),
    "seconds": re.compile(r"^[0-9.]+ s$"),
    "tokens-per-second": re.compile(r"^[0-9,]+ tok/s$"),
    "eval-loss": re.compile(r"^[0-9]+\.[0-9]{4}$"),
    "artifact-size": re.compile(r"^[0-9.]+ (B|kB|MB)$"),
}
SHARED = {"max_steps": 4, "max_length": 128}  # 128 keeps every alpaca_small record


def _lora_claim(studio: StudioProcess, dataset_id: int, model_id: int) -> str:
    """The sentence the page must show for LoRA, worked out here from the same estimate."""
    body = {"kind": "finetune", "dataset_id": dataset_id, "base_model": model_id, "method": "lora",
            "hyperparameters": SHARED}  # fmt: skip
    with studio.client() as client:
        est = client.post("/api/jobs/estimate", json=body).json()
    percent = 100 * est["trainable_parameters"] / est["total_parameters"]
    where = "below" if percent < 0.1 else "above" if percent > 1 else "within"
    return rf"LoRA trains [0-9.]+% of tiny's [0-9.]+[kMB]? parameters — {where} the usual 0\.1\u20131%"  # an en dash


def test_three_methods_on_one_dataset(page: Any, studio: StudioProcess, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    with studio.client() as client:
        dataset_id, model_id = setup_data(client, tmp_path)
    login(page, studio)
    page.goto("/methods")
    page.select_option("#methods-dataset", str(dataset_id))
    page.select_option("#methods-base", str(model_id))
    # Alpaca trains SFT: IA³ and prompt tuning can; QLoRA needs a CUDA worker this studio does not have.
    expect(page.locator("#methods-choices input[value=qlora]")).to_be_disabled()
    for name, value in SHARED.items():
        page.fill(f"#methods-{name}", str(value))
    for method in METHODS:
        page.check(f"#methods-choices input[value={method}]")

    estimates = page.locator("#methods-estimates li[data-method]")
    expect(estimates).to_have_count(3)
    expect(page.locator("#methods-estimates li[data-method=lora] .method-claim")).to_have_text(
        re.compile(_lora_claim(studio, dataset_id, model_id))
    )
    for method in METHODS:
        expect(page.locator(f"#methods-estimates li[data-method={method}]")).to_contain_text("of memory")

    shot(page, "methods-estimates")
    page.click("#methods-launch")
    expect(page).to_have_url(re.compile(r"/methods\?ids=\d+,\d+,\d+$"))
    ids = [int(i) for i in page.url.split("ids=")[1].split(",")]
    expect(page.locator("#methods-table thead th[data-run]")).to_have_count(3)
    # Tiny runs on the studio's one worker, one after another; the table follows them without a reload.
    expect(page.locator("#methods-table")).to_have_attribute("data-live", "closed", timeout=180_000)
    shot(page, "methods-view")
    with studio.client() as client:
        jobs = [client.get(f"/api/jobs/{i}").json() for i in ids]
    assert all(j["status"] == "succeeded" for j in jobs), [(j["name"], j["status"], j["error"]) for j in jobs]
    for job_id, method in zip(ids, METHODS, strict=True):
        run = page.locator(f"#methods-table thead th[data-run='{job_id}']")
        expect(run).to_contain_text(f"· {method}")
        expect(run).to_have_attribute("data-status", "succeeded")
        for col, text in CELLS.items():
            expect(page.locator(f"#methods-table td[data-run='{job_id}'][data-col={col}]")).to_have_text(text)
    expect(page.locator("#methods-claims li")).to_have_count(3)
    curves = "&".join(f"ids={i}" for i in ids)
    expect(page.locator("#methods-curves")).to_have_attribute("href", f"/compare?{curves}")
