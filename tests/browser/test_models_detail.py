"""Headless Chromium through a model's page: upload a zip model, open its page from the models list, see its
files, config summary and the jobs that used it, and start a fine-tune from it. Screenshots land in
test-output/screenshots/."""

import json
import re

import pytest

from tests.api.test_models import model_files, zipped
from tests.browser.test_dashboard import FIXTURES, page, shot
from tests.browser.test_jobs_ui import login
from tests.support import StudioProcess

pytestmark = pytest.mark.browser
__all__ = ["page"]  # fixture shared with the dashboard test

CONFIG = json.dumps(
    {"model_type": "llama", "num_hidden_layers": 2, "hidden_size": 16, "vocab_size": 64, "max_position_embeddings": 256}
).encode()


def test_model_page_shows_files_config_jobs_and_starts_a_finetune(page, studio: StudioProcess) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect

    client = studio.client()
    files = model_files(**{"config.json": CONFIG})
    res = client.post("/api/models", files={"file": ("page-model.zip", zipped(files))})
    assert res.status_code == 201, res.text
    model = res.json()
    dataset = client.post("/api/datasets", files={"file": ("tiny.txt", (FIXTURES / "tiny.txt").read_bytes())}).json()
    body = {"kind": "finetune", "dataset_id": dataset["id"], "base_model": model["id"], "name": "from-page-model"}
    job = client.post("/api/jobs", json={**body, "objective": "causal_lm"}).json()

    login(page, studio)
    page.goto("/models")
    page.click(f"#model-{model['id']} .cell-title a")
    page.wait_for_url(re.compile(rf"/models/{model['id']}$"))
    expect(page.locator("h1")).to_contain_text("page-model")
    expect(page.locator("#model-architecture")).to_have_text("llama")
    expect(page.locator("#model-layers")).to_have_text("2")
    expect(page.locator("#model-context")).to_have_text("256")
    expect(page.locator("#model-chat-template")).to_have_text("no")
    expect(page.locator("#model-files tbody tr")).to_have_count(len(files))
    expect(page.locator("#model-files")).to_contain_text("model.safetensors")
    expect(page.locator(f'#model-jobs tr[data-job-id="{job["id"]}"]')).to_contain_text("from-page-model")
    shot(page, "model-detail")
    page.click("#model-finetune")
    page.wait_for_url(re.compile(rf"/jobs/new\?kind=finetune&base_model={model['id']}"))
