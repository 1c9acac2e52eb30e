"""Markup a user stores (a dataset's name and records, a job's name and watch prompt) is shown as text by every
page that shows it: no element is made of it and no script of it runs (the CSP would block one, but the pages
must not rely on that)."""

import io
import json

import pytest

from tests.browser.test_dashboard import page
from tests.browser.test_jobs_ui import login
from tests.support import StudioProcess

pytestmark = pytest.mark.browser
__all__ = ["page"]  # fixture shared with the dashboard test

MARKUP = "<img src=x onerror=\"document.title='owned'\"><b id=injected>bold</b>"


def test_stored_markup_renders_as_text(page, studio: StudioProcess) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect

    with studio.client() as http:
        records = "".join(json.dumps({"text": f"{MARKUP} once upon a time {i}."}) + "\n" for i in range(40))
        files = {"file": (f"{MARKUP}.jsonl", io.BytesIO(records.encode()))}
        dataset = http.post("/api/datasets", files=files)
        assert dataset.status_code == 201, dataset.text
        body = {"kind": "pretrain", "architecture": "tiny", "dataset_id": dataset.json()["id"], "name": MARKUP}
        body |= {"watch_prompts": [MARKUP], "hyperparameters": {"max_steps": 2, "max_length": 32}}
        job = http.post("/api/jobs", json=body)
        assert job.status_code == 201, job.text
        http.post(f"/api/jobs/{job.json()['id']}/cancel")
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    login(page, studio)
    # Where it is kept verbatim (a job's name; a dataset's records) it is shown as text; the list of datasets shows
    # the file name, which the upload made safe.
    pages = {"/jobs": True, f"/jobs/{job.json()['id']}": True, "/datasets": False}
    pages[f"/datasets/{dataset.json()['id']}"] = True
    for path, verbatim in pages.items():
        page.goto(path)
        page.wait_for_load_state("networkidle")
        if verbatim:
            expect(page.locator("main")).to_contain_text("<b id=injected>bold</b>")  # the text itself, shown
        assert page.locator("#injected").count() == 0, path
        assert page.locator("img[src='x']").count() == 0, path
        assert page.title() != "owned" and dialogs == [], path
