"""Headless Chromium: a text file of one document per line is inspected as one record per line (the reason shown,
the split changeable), and a chat file whose later records carry an extra column shows it on the dataset page."""

import json
import re
from pathlib import Path

import pytest

from tests.browser.test_dashboard import page, shot
from tests.browser.test_datasets_ui import _dataset_id, _login
from tests.support import StudioProcess

pytestmark = pytest.mark.browser
__all__ = ["page"]  # fixture shared with the dashboard test


def test_text_split_shown_and_changed_then_an_extra_column_shown(page, studio: StudioProcess, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect

    _login(page, studio)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(f"Sentence {i} of the corpus.\n" for i in range(50)))
    page.goto("/datasets")
    page.set_input_files("#upload-file", str(corpus))
    expect(page.locator("#inspect-scope")).to_contain_text("50 records")
    expect(page.locator("#inspect-text-split")).to_have_value("line")
    expect(page.locator("#inspect-notes")).to_contain_text("no blank line between its 50 lines")
    expect(page.locator("#inspect-rows tbody tr")).to_have_count(5)  # the first five records
    shot(page, "datasets-inspect-lines")

    page.select_option("#inspect-text-split", "file")
    expect(page.locator("#inspect-scope")).to_contain_text("whole file: 1 record")
    page.select_option("#inspect-text-split", "line")
    expect(page.locator("#inspect-scope")).to_contain_text("50 records")
    expect(page.locator("#upload-submit")).to_be_enabled()
    page.click("#upload-submit")
    _dataset_id(page)
    expect(page.locator("#dataset-records")).to_have_text("50")

    # ShareGPT with `tools` on the second record only: the page once answered 500.
    call = json.dumps({"name": "get_weather", "arguments": {"city": "Paris"}})
    records = [
        {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]},
        {
            "conversations": [
                {"from": "human", "value": "Weather?"},
                {"from": "function_call", "value": call},
                {"from": "observation", "value": "sunny"},
                {"from": "gpt", "value": "Sunny."},
            ],
            "tools": [{"name": "get_weather", "parameters": {"type": "object", "properties": {}}}],
        },
    ]
    tools = studio.client().post(
        "/api/datasets", files={"file": ("tools.jsonl", "".join(json.dumps(r) + "\n" for r in records).encode())}
    )
    assert tools.status_code == 201, tools.text
    page.goto(f"/datasets/{tools.json()['id']}")
    expect(page.locator("#dataset-rows thead th")).to_have_text(["#", "messages", "tools", re.compile("Expand")])
    expect(page.locator("#dataset-rows tbody tr").nth(1)).to_contain_text('"name":"get_weather"')
    shot(page, "dataset-extra-column")
