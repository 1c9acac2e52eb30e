"""Headless Chromium through the new-job wizard with each PEFT method the registry added (IA³, prompt tuning, prefix
tuning): the method picked, one of its own settings changed, the estimate's trainable parameters following it, the
review summing it up, the job launched with that method_config, and the job page's Export panel offering a merge
only where the method's adapter can be merged."""

import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from backend.method import registry
from tests.browser.test_dashboard import FIXTURES, page
from tests.browser.test_jobs_ui import login
from tests.browser.test_new_job_wizard import on_step, setup_data, view
from tests.support import StudioProcess

pytestmark = pytest.mark.browser
__all__ = ["page"]  # fixture shared with the dashboard test

# method -> (the setting changed: input id suffix, value typed, value the job stores, review summary text)
CHANGES: dict[str, tuple[str, str, Any, str]] = {
    "ia3": ("target_modules", "k_proj, v_proj", ["k_proj", "v_proj"], "IA³ · target modules k_proj/v_proj"),
    "prompt_tuning": ("num_virtual_tokens", "8", 8, "Prompt tuning · num virtual tokens 8, init random"),
    "prefix_tuning": ("num_virtual_tokens", "8", 8, "Prefix tuning · num virtual tokens 8"),
}


def human(n: float) -> str:
    """job_form.js human(): the estimate's figures as the page writes them."""
    units, i = ["", "k", "M", "G"], 0
    while abs(n) >= 1000 and i < len(units) - 1:
        n, i = n / 1000, i + 1
    return f"{n:.{2 if n < 10 and i > 0 else 0}f}{units[i]}"


def trainable(client: httpx.Client, body: dict[str, Any]) -> str:
    res = client.post("/api/jobs/estimate", json=body)
    assert res.status_code == 200, res.text
    return human(res.json()["trainable_parameters"])


def test_each_new_method_through_the_wizard(page, studio: StudioProcess, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect

    client = studio.client()
    dataset_id, model_id = setup_data(client, tmp_path)
    login(page, studio)
    for method, (field, typed, stored, summary) in CHANGES.items():
        page.goto("/jobs/new")
        page.check("#job-kind-finetune")
        page.click("#wizard-next")
        on_step(page, "data")
        page.select_option("#job-dataset", str(dataset_id))
        page.click("#wizard-next")
        on_step(page, "model")
        page.select_option("#job-base-model", str(model_id))
        page.click("#wizard-next")
        on_step(page, "method")
        expect(page.locator("#job-objective")).to_have_value("sft")
        page.select_option("#job-method", method)
        expect(page.locator(f'[data-method-help="{method}"]')).to_be_visible()
        page.click("#wizard-next")
        on_step(page, "settings")
        page.fill("#hp-max_steps", "2")
        # Only the chosen method's settings are shown; the estimate counts them as the registry does.
        expect(page.locator(f"#mc-group-{method}")).to_be_visible()
        expect(page.locator("#mc-group-lora")).to_be_hidden()
        body = {"kind": "finetune", "dataset_id": dataset_id, "base_model": model_id, "method": method}
        parameters = page.locator("#est-parameters")
        expect(parameters).to_contain_text(f"{trainable(client, body)} / ")
        checkpointing = page.locator("#hp-gradient_checkpointing")
        if registry.METHODS[method].gradient_checkpointing:
            expect(checkpointing).to_be_enabled()
        else:
            expect(checkpointing).to_be_disabled()
            expect(checkpointing).not_to_be_checked()
        page.fill(f"#mc-{method}-{field}", typed)
        changed = trainable(client, {**body, "method_config": {field: stored}})
        expect(parameters).to_contain_text(f"{changed} / ")
        view(page, f"method-{method}")
        if method == "prompt_tuning":
            # A check across the settings (init "text" needs the text): the server's 422 marks the field it names.
            page.select_option("#mc-prompt_tuning-init", "text")
            page.click("#wizard-next")
            on_step(page, "review")
            page.click("#job-submit")
            on_step(page, "settings")
            expect(page.locator("#mc-prompt_tuning-init_text")).to_have_attribute("aria-invalid", "true")
            expect(page.locator("#mc-prompt_tuning-init_text-error")).to_contain_text("init_text is required")
            page.select_option("#mc-prompt_tuning-init", "random")

        page.click("#wizard-next")
        on_step(page, "review")
        expect(page.locator("#review-summary")).to_contain_text(summary)
        page.fill("#job-name", f"wizard-{method}")
        page.click("#job-submit")
        page.wait_for_url(re.compile(r"/jobs/\d+$"))
        job_id = int(page.url.rsplit("/", 1)[1])
        client.post(f"/api/jobs/{job_id}/cancel")  # nothing to train here: keep the warm worker free
        job = client.get(f"/api/jobs/{job_id}").json()
        assert (job["name"], job["method"], job["objective"]) == (f"wizard-{method}", method, "sft")
        assert job["method_config"][field] == stored
        assert job["hyperparameters"]["max_steps"] == 2

        # The Export panel: a merge is offered only where the registry says the adapter folds into the base.
        merged = page.locator("#export-format option[value='merged']")
        if registry.METHODS[method].mergeable:
            expect(merged).to_be_enabled()
            expect(page.locator("#export-merge-note")).to_have_count(0)
        else:
            expect(merged).to_be_disabled()
            expect(page.locator("#export-format")).to_have_value("adapter")
            expect(page.locator("#export-merge-note")).to_be_visible()
            expect(page.locator("#export-merge-note")).to_contain_text(registry.METHODS[method].merge_note)


def test_methods_that_cannot_train_the_objective_are_not_offered(page, studio: StudioProcess) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect

    client = studio.client()
    pairs = (FIXTURES / "formats" / "preference.jsonl").read_bytes()
    res = client.post("/api/datasets", files={"file": ("pairs.jsonl", pairs)})
    assert res.status_code == 201, res.text
    login(page, studio)
    page.goto(f"/jobs/new?kind=finetune&dataset_id={res.json()['id']}")
    # Preference pairs: DPO is picked, the objectives of other shapes are off, and so are the methods DPO lacks.
    objective = page.locator("#job-objective")
    expect(objective).to_have_value("dpo")
    expect(objective.locator("option[value='sft']")).to_be_disabled()
    for name, spec in registry.METHODS.items():
        option = page.locator(f"#job-method option[value='{name}']")
        if "dpo" in spec.objectives:
            expect(option).to_be_enabled()
        else:
            expect(option).to_be_disabled()
            expect(option).to_have_attribute("title", re.compile(r"does not train DPO; it trains SFT"))
    expect(page.locator("#job-method")).to_have_value("lora")
