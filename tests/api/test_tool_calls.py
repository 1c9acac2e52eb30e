"""Tool calling over the API: ShareGPT function_call/observation turns and OpenAI tool_calls/tool messages read
into one canonical form (uploaded, previewed, shown), their mistakes named by line and field; the playground
takes tool definitions (a bad JSON is a 422 naming `tools`) and returns the calls found in an answer."""

import io
import json
from typing import Any

import pytest
from fastapi.testclient import TestClient

from backend.dataset.formats import layouts
from backend.dataset.formats.errors import FormatError
from backend.playground.lifecycle import append_output, claim_generation, finish_generation
from backend.playground.tool_calls import parse_tool_calls
from tests.api.test_models import model_files, zipped

WEATHER = {
    "name": "weather",
    "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
TOOLS = [{"type": "function", "function": WEATHER}]
CALL = {"type": "function", "function": {"name": "weather", "arguments": '{"city": "Paris"}'}}
CANONICAL = [
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": "", "tool_calls": [CALL]},
    {"role": "tool", "content": '{"temp": 21}'},
    {"role": "assistant", "content": "It is 21 degrees in Paris."},
]
# The file: function calls and their results, and a `tools` column on some records only (a JSON
# string, as LLaMA-Factory writes it, with a bare definition).
SHAREGPT = [
    {
        "conversations": [
            {"from": "human", "value": "Weather in Paris?"},
            {"from": "function_call", "value": '{"name": "weather", "arguments": {"city": "Paris"}}'},
            {"from": "observation", "value": '{"temp": 21}'},
            {"from": "gpt", "value": "It is 21 degrees in Paris."},
        ],
        "tools": json.dumps([WEATHER]),
    },
    {"conversations": [{"from": "human", "value": "Hello"}, {"from": "gpt", "value": "Hi, how can I help?"}]},
    {
        "conversations": [
            {"from": "human", "value": "And in Rome?"},
            {"from": "function_call", "value": '[{"name": "weather", "arguments": "{\\"city\\": \\"Rome\\"}"}]'},
            {"from": "observation", "value": "sunny"},
            {"from": "gpt", "value": "Sunny."},
        ],
        "tools": TOOLS,
    },
]
OPENAI = {
    "messages": [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": {"city": "Paris"}}}
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 21}'},
        {"role": "assistant", "content": "It is 21 degrees in Paris."},
    ],
    "tools": TOOLS,
}


def test_sharegpt_and_openai_tool_calls_read_into_one_form() -> None:
    sharegpt = layouts.sharegpt(SHAREGPT[0], "messages")
    assert sharegpt == {"messages": CANONICAL, "tools": TOOLS}  # the bare definition is wrapped
    openai = layouts.openai(OPENAI, "messages")
    call_with_id = {**CALL, "id": "call_1"}
    assert openai["messages"][1] == {"role": "assistant", "content": "", "tool_calls": [call_with_id]}
    assert openai["messages"][2] == {"role": "tool", "content": '{"temp": 21}', "tool_call_id": "call_1"}
    assert openai["tools"] == TOOLS
    assert "tools" not in layouts.sharegpt(SHAREGPT[1], "messages")  # records without tools have none
    rome = layouts.sharegpt(SHAREGPT[2], "messages")["messages"][1]["tool_calls"]
    assert rome == [{"type": "function", "function": {"name": "weather", "arguments": '{"city": "Rome"}'}}]


@pytest.mark.parametrize(
    ("record", "field", "needle"),
    [
        (
            {"messages": [{"role": "user", "content": "x", "tool_calls": [CALL]}]},
            "messages[0].tool_calls",
            "only assistant",
        ),
        (
            {"messages": [{"role": "assistant", "content": "", "tool_calls": [{"function": {}}]}]},
            "messages[0].tool_calls[0]",
            "'name'",
        ),
        (
            {"messages": [{"role": "assistant", "content": "", "tool_calls": [{"id": 3, **CALL}]}]},
            "messages[0].tool_calls[0].id",
            "string",
        ),
        ({"messages": [{"role": "tool"}]}, "messages[0].content", "missing"),
        ({"messages": [{"role": "user", "content": "x"}], "tools": "[{"}, "tools", "JSON"),
        ({"messages": [{"role": "user", "content": "x"}], "tools": [{"description": "no name"}]}, "tools[0]", "'name'"),
        (
            {"conversations": [{"from": "function_call", "value": '{"arguments": {}}'}]},
            "conversations[0].value",
            "'name'",
        ),
    ],
)
def test_tool_mistakes_name_the_field(record: dict[str, Any], field: str, needle: str) -> None:
    convert = layouts.sharegpt if "conversations" in record else layouts.openai
    with pytest.raises(FormatError) as caught:
        convert(record, "messages")
    assert caught.value.field == field and needle in caught.value.message


def _upload(client: TestClient, name: str, content: bytes) -> Any:
    return client.post("/api/datasets", files={"file": (name, io.BytesIO(content))}, data={"name": "tools"})


def test_a_sharegpt_file_with_tools_on_some_records_uploads_and_shows(client: TestClient) -> None:
    res = _upload(client, "tools.json", json.dumps(SHAREGPT, indent=1).encode())
    assert res.status_code == 201, res.text
    body = res.json()
    assert (body["format"], body["shape"], body["record_count"]) == ("sharegpt", "messages", 3)
    dataset_id = body["id"]
    assert client.get(f"/api/datasets/{dataset_id}").status_code == 200
    preview = client.get(f"/api/datasets/{dataset_id}/preview")
    assert preview.status_code == 200, preview.text
    rows = preview.json()["rows"]
    assert [("tools" in r) for r in rows] == [True, False, True]
    assert "weather" in json.dumps(rows[0]["messages"][1])  # the call, not an empty assistant turn
    page = client.get(f"/datasets/{dataset_id}")
    assert page.status_code == 200 and "weather" in page.text


def test_an_openai_file_with_tool_calls_uploads_and_a_bad_one_names_line_and_field(client: TestClient) -> None:
    plain = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    good = "\n".join(json.dumps(r) for r in (OPENAI, plain)).encode()
    res = _upload(client, "tools.jsonl", good)
    assert res.status_code == 201, res.text
    assert client.get(f"/api/datasets/{res.json()['id']}/preview").status_code == 200
    bad = {"messages": [{"role": "user", "content": "x", "tool_calls": [CALL]}]}
    res = _upload(client, "bad.jsonl", "\n".join(json.dumps(r) for r in (plain, bad)).encode())
    assert res.status_code == 422
    assert "line 2" in res.json()["detail"] and "messages[0].tool_calls" in res.json()["detail"]


@pytest.mark.parametrize(
    ("text", "bare", "calls"),
    [
        (
            '<tool_call>\n{"name": "weather", "arguments": {"city": "Paris"}}\n</tool_call>',
            False,
            [("weather", {"city": "Paris"})],
        ),
        # Two calls with prose around them; the second not closed (generation stopped at EOS).
        (
            'Let me check. <tool_call>{"name": "a", "arguments": {}}</tool_call>\n'
            '<tool_call>{"name": "b", "arguments": {"x": 1}}',
            False,
            [("a", {}), ("b", {"x": 1})],
        ),
        ('<tool_call>{"name": "a", "arguments": {"x": ', False, []),  # cut off mid-call: no call yet
        ('<tool_call>{"arguments": {}}</tool_call>', False, []),  # no name: not a call
        ('{"name": "weather", "parameters": {"city": "Rome"}}', True, [("weather", {"city": "Rome"})]),  # Llama 3.1
        ('[{"name": "weather", "arguments": {"city": "Oslo"}}]', True, [("weather", {"city": "Oslo"})]),  # Mistral
        ('{"name": "weather", "parameters": {"city": "Rome"}}', False, []),  # JSON asked for without tools
        ("It is sunny.", True, []),
    ],
)
def test_tool_calls_are_found_in_generated_text(text: str, bare: bool, calls: list[tuple[str, Any]]) -> None:
    found = parse_tool_calls(text, bare=bare)
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in found] == calls
    assert all(c["type"] == "function" and isinstance(c["function"]["arguments"], str) for c in found)


@pytest.fixture
def model_id(client: TestClient) -> int:
    res = client.post("/api/models", files={"file": ("base.zip", io.BytesIO(zipped(model_files())))})
    assert res.status_code == 201, res.text
    return int(res.json()["id"])


@pytest.mark.parametrize(
    ("tools", "extra", "needle"),
    [
        ("[{", {}, "tools"),
        ('{"name": "weather"}', {}, "list of tool definitions"),
        ([{"description": "no name"}], {}, "[0]"),
        (7, {}, "tools"),
        (TOOLS, {"chat": False}, "chat layout"),
    ],
)
def test_playground_refuses_bad_tools(
    client: TestClient, model_id: int, tools: Any, extra: dict[str, Any], needle: str
) -> None:
    res = client.post("/api/generations", json={"prompt": "hi", "model_id": model_id, "tools": tools, **extra})
    assert res.status_code == 422, res.text
    detail = res.json()["detail"]
    assert any("tools" in e["loc"] or "chat" in e["msg"] for e in detail), detail
    assert needle in res.text


def test_playground_takes_tools_and_returns_the_calls_it_finds(client: TestClient, model_id: int) -> None:
    body = {"prompt": "Weather in Paris?", "model_id": model_id, "tools": json.dumps([WEATHER])}
    res = client.post("/api/generations", json=body)
    assert res.status_code == 201, res.text
    made = res.json()
    # Tools ask for a chat turn even on a base without a chat template; the definitions are stored wrapped.
    assert made["params"]["chat"] is True and made["params"]["tools"] == TOOLS and made["tool_calls"] == []
    gid = made["id"]
    assert claim_generation(gid)  # what the worker does with the model's answer
    append_output(gid, 'Checking.\n<tool_call>\n{"name": "weather", "arguments": {"city": "Paris"}}\n</tool_call>')
    finish_generation(gid)
    read = client.get(f"/api/generations/{gid}").json()
    assert read["tool_calls"] == [CALL]
    assert client.get("/api/generations").json()["items"][0]["tool_calls"] == [CALL]
    # Without tools, a plain JSON answer is just an answer.
    plain = client.post("/api/generations", json={"prompt": "JSON please", "model_id": model_id}).json()
    assert "tools" not in plain["params"]
    append_output(plain["id"], '{"name": "weather", "arguments": {}}')
    assert client.get(f"/api/generations/{plain['id']}").json()["tool_calls"] == []
