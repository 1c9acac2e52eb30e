"""Headless Chromium through the Playground's tools field: bad JSON is refused in words naming `tools` (by the
real API), and a tool call in an answer is shown as a card of its own. A tiny model does not call tools by
itself, so the generation endpoints answer with a crafted call (the server's parsing is tested in
tests/api/test_tool_calls.py); the page, its script and the rest of the API are the real ones."""

import io
import json
import re
from typing import Any

import pytest

from tests.api.test_models import model_files, zipped
from tests.browser.test_dashboard import page, shot
from tests.support import StudioProcess

pytestmark = pytest.mark.browser
__all__ = ["page"]  # fixture shared with the dashboard test

TOOLS = [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}]
ANSWER = 'Let me look.\n<tool_call>\n{"name": "weather", "arguments": {"city": "Paris"}}\n</tool_call>'
CALL = {"type": "function", "function": {"name": "weather", "arguments": '{"city": "Paris"}'}}


def _generation(model_id: int, body: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": 4242,
        "model_id": model_id,
        "job_id": None,
        "checkpoint": None,
        "prompt": body["prompt"],
        "params": {
            "max_new_tokens": 128,
            "temperature": 0.0,
            "top_p": 1.0,
            "chat": True,
            "task": "generate",
            "tools": TOOLS,
        },
        "status": "done",
        "output": ANSWER,
        "error": None,
        "created_at": "2026-01-01T00:00:00Z",
        "finished_at": "2026-01-01T00:00:01Z",
        "target": f"model base (#{model_id})",
        "tool_calls": [CALL],
    }


def test_tools_field_refuses_bad_json_and_shows_a_call(page, studio: StudioProcess) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import Route, expect

    with studio.client() as client:
        res = client.post("/api/models", files={"file": ("base.zip", io.BytesIO(zipped(model_files())))})
        assert res.status_code == 201, res.text
        model_id = int(res.json()["id"])
    page.goto("/login")
    page.fill("#login-email", studio.email)
    page.fill("#login-password", studio.password)
    page.click("#login-submit")
    expect(page).to_have_url(re.compile(r"/jobs$"))
    page.goto(f"/playground?model_id={model_id}")
    expect(page.locator("#pg-left-model")).to_have_value(str(model_id))

    # The real API refuses a tools field that is not JSON, and the column says why.
    page.fill("#pg-prompt", "Weather in Paris?")
    page.click("#pg-tools-field summary")
    page.fill("#pg-tools", "[{")
    page.click("#pg-generate")
    expect(page.locator("#pg-left-error")).to_contain_text("tools: expected a list of tool definitions")

    sent: list[dict[str, Any]] = []

    def create(route: Route) -> None:
        if route.request.method != "POST":
            route.continue_()
            return
        body = json.loads(route.request.post_data or "{}")
        sent.append(body)
        route.fulfill(status=201, json=_generation(model_id, body))

    stream = (
        'event: status\ndata: {"status": "done"}\n\n'
        f"event: token\nid: {len(ANSWER)}\ndata: {json.dumps({'text': ANSWER})}\n\n"
        'event: end\ndata: {"status": "done", "error": null}\n\n'
    )
    page.route("**/api/generations", create)
    page.route("**/api/generations/4242/stream*", lambda r: r.fulfill(body=stream, content_type="text/event-stream"))
    page.route(
        "**/api/generations/4242", lambda r: r.fulfill(json=_generation(model_id, {"prompt": "Weather in Paris?"}))
    )
    page.fill("#pg-tools", json.dumps(TOOLS))
    page.click("#pg-generate")
    expect(page.locator("#pg-left")).to_have_attribute("data-status", "done")
    card = page.locator("#pg-left-calls .playground-tool-call")
    expect(card).to_have_count(1)
    expect(card.locator("code")).to_have_text("weather")
    expect(card.locator("pre")).to_contain_text('"city": "Paris"')
    expect(page.locator("#pg-left-target")).to_contain_text("1 tool")
    assert sent and sent[0]["tools"] == json.dumps(TOOLS)  # the field goes as written: the server parses it
    shot(page, "playground-tool-call")
