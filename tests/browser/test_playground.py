"""Headless Chromium through the Playground: from a fine-tuned job's page to its answer beside its base model's,
both streamed by the worker; a reload replays them. Screenshots land in test-output/screenshots/."""

import re
from typing import Any

import httpx
import pytest

from tests.browser.test_dashboard import FIXTURES, SHOTS, page, shot
from tests.support import StudioProcess

pytestmark = pytest.mark.browser
__all__ = ["page"]  # fixture shared with the dashboard test


def _upload(client: httpx.Client, name: str) -> int:
    res = client.post("/api/datasets", files={"file": (name, (FIXTURES / name).read_bytes())})
    assert res.status_code == 201, res.text
    return int(res.json()["id"])


def _run(studio: StudioProcess, client: httpx.Client, body: dict[str, Any]) -> int:
    res = client.post("/api/jobs", json=body)
    assert res.status_code == 201, res.text
    job_id = int(res.json()["id"])
    studio.wait_job(client, job_id, ("succeeded", "failed"), timeout=240)
    assert client.get(f"/api/jobs/{job_id}").json()["status"] == "succeeded", studio.logs()
    return job_id


def _train(studio: StudioProcess) -> tuple[int, int]:
    """(base model id, LoRA SFT job id): the tiny preset pretrained briefly, then fine-tuned with checkpoints."""
    with studio.client() as client:
        text_id, alpaca_id = _upload(client, "tiny.txt"), _upload(client, "alpaca_small.json")
        hp = {"max_length": 64, "batch_size": 8, "learning_rate": 0.002}
        pretrain = _run(
            studio,
            client,
            {"name": "pg-base", "kind": "pretrain", "architecture": "tiny", "dataset_id": text_id,
             "hyperparameters": {**hp, "max_steps": 30}},
        )  # fmt: skip
        base_id = next(m["id"] for m in client.get("/api/models").json()["items"] if m["job_id"] == pretrain)
        finetune = _run(
            studio,
            client,
            {"name": "pg-lora", "kind": "finetune", "dataset_id": alpaca_id, "base_model": str(base_id),
             "method": "lora", "objective": "sft",
             "hyperparameters": {**hp, "max_steps": 6, "checkpoint_steps": 3, "max_length": 128}},
        )  # fmt: skip
    return base_id, finetune


def test_playground_answer(page, studio: StudioProcess) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect

    base_id, job_id = _train(studio)
    page.goto("/login")
    page.fill("#login-email", studio.email)
    page.fill("#login-password", studio.password)
    page.click("#login-submit")
    expect(page).to_have_url(re.compile(r"/jobs$"))

    # From the finished job's page to the Playground, the job preselected and its base on the left.
    page.goto(f"/jobs/{job_id}")
    page.click("#job-playground")
    page.wait_for_url(re.compile(rf"/playground\?job_id={job_id}$"))
    expect(page.locator("#pg-right-job")).to_have_value(str(job_id))
    expect(page.locator("#pg-left-model")).to_have_value(str(base_id))
    expect(page.locator("#pg-right-checkpoint option[value='checkpoint-3']")).to_have_count(1)
    expect(page.locator("#pg-history")).to_contain_text("None yet")

    # An empty prompt is refused in place.
    page.click("#pg-generate")
    expect(page.locator("#pg-form-error")).to_contain_text("Write a prompt")

    # Keyboard only: type the prompt, Ctrl+Enter generates both columns.
    page.fill("#pg-max-new-tokens", "24")
    page.focus("#pg-prompt")
    page.keyboard.type("The fox sees the cow")
    page.keyboard.press("Control+Enter")
    expect(page.locator("#pg-form-error")).to_be_hidden()
    for side in ("left", "right"):
        expect(page.locator(f"#pg-{side}")).to_have_attribute("data-status", "done", timeout=90_000)
        expect(page.locator(f"#pg-{side}-error")).to_be_hidden()
    left = page.locator("#pg-left-output").text_content() or ""
    right = page.locator("#pg-right-output").text_content() or ""
    assert left.strip() and right.strip(), (left, right)
    expect(page.locator("#pg-left-target")).to_contain_text(f"#{base_id}")
    expect(page.locator("#pg-right-target")).to_contain_text("chat layout")  # an SFT job, asked as it trained
    expect(page.locator("#pg-history li.playground-history-item")).to_have_count(2)
    expect(page).to_have_url(re.compile(r"left=\d+.*right=\d+|right=\d+.*left=\d+"))
    shot(page, "playground")

    # A reload replays both answers from the server, identical.
    page.reload()
    for side, text in (("left", left), ("right", right)):
        expect(page.locator(f"#pg-{side}")).to_have_attribute("data-status", "done")
        expect(page.locator(f"#pg-{side}-output")).to_have_text(text)
    expect(page.locator("#pg-prompt")).to_have_value("The fox sees the cow")
    expect(page.locator("#pg-max-new-tokens")).to_have_value("24")

    # A checkpoint answers on the right.
    page.select_option("#pg-right-checkpoint", "checkpoint-3")
    page.click("#pg-generate")
    expect(page.locator("#pg-right-target")).to_contain_text("checkpoint-3")
    for side in ("left", "right"):
        expect(page.locator(f"#pg-{side}")).to_have_attribute("data-status", "done", timeout=90_000)

    page.set_viewport_size({"width": 390, "height": 844})  # a phone: the columns stack
    page.screenshot(path=str(SHOTS / "playground-phone.png"), full_page=True)
