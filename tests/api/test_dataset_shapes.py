"""Datasets whose records differ in shape: optional keys on some records only, nested values, nulls. Every
page and endpoint that shows records answers 200 and shows every column (the dataset page once answered 500:
its preview table took its columns from the first record)."""

import html
import io
import json
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import select

from backend.dataset.table import cell_text, table_of
from backend.db import DatasetAnalysis, session_scope
from workers.analysis.tasks import analyze_dataset

TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {}}}}]
# ShareGPT with tool calls: `tools` (a JSON string, as LLaMA-Factory writes it) on the first record only, a
# function_call turn (an assistant message with no text) on the second.
SHAREGPT = [
    {
        "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}],
        "tools": json.dumps(TOOLS),
    },
    {
        "conversations": [
            {"from": "human", "value": "Weather in Paris?"},
            {"from": "function_call", "value": json.dumps({"name": "get_weather", "arguments": {"city": "Paris"}})},
            {"from": "observation", "value": "sunny"},
            {"from": "gpt", "value": "It is <b>sunny</b>."},
        ]
    },
]
# Alpaca records: `system` on the last only, and a source key the layout does not read.
ALPACA = [
    {"instruction": "Say hi", "output": "hi"},
    {"instruction": "Add", "input": "1+1", "output": "2", "meta": {"tags": ["math", None]}},
    {"instruction": "Greet", "output": "hello", "system": "Be brief."},
]


def _upload(client: TestClient, name: str, records: list[dict[str, Any]]) -> dict[str, Any]:
    body = "".join(json.dumps(r) + "\n" for r in records).encode()
    res = client.post("/api/datasets", files={"file": (name, io.BytesIO(body))})
    assert res.status_code == 201, res.text
    return dict(res.json())


def _header(page: str) -> list[str]:
    head = page.split('id="dataset-rows"', 1)[1].split("</thead>", 1)[0]
    return [html.unescape(th.split(">", 1)[1]) for th in head.split("</th>")[1:-2]]


def test_tool_records_of_different_shapes_show_on_every_page(client: TestClient) -> None:
    ds = _upload(client, "tools.jsonl", SHAREGPT)
    assert (ds["format"], ds["record_count"]) == ("sharegpt", 2)

    page = client.get(f"/datasets/{ds['id']}")
    assert page.status_code == 200, page.text
    assert _header(page.text) == ["messages", "tools"]
    assert '"name":"get_weather"' in html.unescape(page.text)  # tools and the tool call, as compact JSON
    assert "assistant: [tool_calls: " in html.unescape(page.text)
    assert "It is &lt;b&gt;sunny&lt;/b&gt;." in page.text  # escaped, never markup
    assert "<b>sunny</b>" not in page.text

    preview = client.get(f"/api/datasets/{ds['id']}/preview")
    assert preview.status_code == 200, preview.text
    rows = preview.json()["rows"]
    assert "tools" in rows[0] and "tools" not in rows[1]
    assert preview.json()["columns"] == ["messages", "tools"]
    assert rows[1]["messages"][1]["tool_calls"][0]["function"]["name"] == "get_weather"
    assert client.get(f"/api/datasets/{ds['id']}").status_code == 200
    assert client.get("/datasets").status_code == 200


def test_an_optional_column_seen_late_is_a_column(client: TestClient) -> None:
    body = "".join(json.dumps(r) + "\n" for r in ALPACA).encode()
    found = client.post("/api/datasets/inspect", files={"file": ("alpaca.jsonl", io.BytesIO(body))})
    assert found.status_code == 200, found.text
    table = found.json()["table"]  # the upload page's preview: cells rendered like the dataset page's
    assert table["columns"] == ["prompt", "completion", "system"]
    assert table["rows"][0] == ["Say hi", "hi", ""] and table["rows"][2][2] == "Be brief."

    ds = _upload(client, "alpaca.jsonl", ALPACA)
    assert ds["columns"] == ["instruction", "output", "input", "meta", "system"]
    page = client.get(f"/datasets/{ds['id']}")
    assert page.status_code == 200, page.text
    assert _header(page.text) == ["prompt", "completion", "system"]  # system: the third record only
    assert "Be brief." in page.text


def test_a_version_of_records_of_different_shapes_shows_too(client: TestClient) -> None:
    # The record without `tools` comes first; the third repeats the second, so hygiene makes a version 2.
    first = _upload(client, "tools.jsonl", [SHAREGPT[1], SHAREGPT[0], SHAREGPT[0]])
    assert client.post(f"/api/datasets/{first['id']}/hygiene").json()["status"] == "queued"
    with session_scope() as s:
        ids = list(s.scalars(select(DatasetAnalysis.id).where(DatasetAnalysis.kind == "hygiene")))
    for analysis_id in ids:
        analyze_dataset(analysis_id)
    res = client.post(f"/api/datasets/{first['id']}/fixes", json={"drop_exact_duplicates": True})
    assert res.status_code == 201, res.text
    second = res.json()
    assert (second["version"], second["record_count"]) == (2, 2)
    for ds in (first, second):
        page = client.get(f"/datasets/{ds['id']}")
        assert page.status_code == 200, page.text
        assert _header(page.text) == ["messages", "tools"]
        assert 'id="dataset-versions"' in page.text
        assert client.get(f"/api/datasets/{ds['id']}/preview").status_code == 200


def test_table_takes_the_union_of_keys_in_first_seen_order() -> None:
    table = table_of([{"a": 1}, {"b": {"x": [1, None]}, "a": None}, {"c": "<i>"}])
    assert table.columns == ["a", "b", "c"]
    assert table.rows == [["1", "", ""], ["", '{"x":[1,null]}', ""], ["", "", "<i>"]]


def test_cells_read_conversations_as_turns_and_the_rest_as_compact_json() -> None:
    turns = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "", "tool_calls": [{"id": "1"}]}]
    assert cell_text(turns) == 'user: hi\nassistant: [tool_calls: [{"id":"1"}]]'
    assert cell_text([1, "é"]) == '[1,"é"]'
    assert cell_text(None) == "" and cell_text(False) == "false"
