"""Tool calls in a generated answer, found in the text the model wrote.

Recognized: `<tool_call>{"name": ..., "arguments": ...}</tool_call>` blocks (the studio's tool fallback, Hermes,
Qwen; a final block the model did not close counts once its JSON is whole), and, when the request gave tools,
an answer that is nothing but a call object or a list of them (Llama 3.1 writes `{"name", "parameters"}`;
Mistral's `[TOOL_CALLS]` marker is a special token the stream drops, leaving the list). Each call comes back in
OpenAI's form, arguments as a JSON string, like the dataset's canonical tool calls.
"""

import json
import re
from typing import Any

TAGGED = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|\Z)", re.DOTALL)
ToolCall = dict[str, Any]


def parse_tool_calls(text: str, *, bare: bool = False) -> list[ToolCall]:
    """The calls `text` makes; `bare` also reads an answer that is only JSON (asked only when tools were given,
    so a plain request for JSON is not taken for a call)."""
    if "<tool_call>" in text:
        return [call for block in TAGGED.findall(text) for call in _calls(block)]
    answer = text.strip().removeprefix("[TOOL_CALLS]").strip()
    return _calls(answer) if bare and answer.startswith(("{", "[")) else []


def _calls(blob: str) -> list[ToolCall]:
    try:
        value = json.loads(blob)
    except ValueError:
        return []  # not (yet) a whole JSON value: no call
    items = value if isinstance(value, list) else [value]
    return [call for item in items if (call := _call(item)) is not None]


def _call(item: Any) -> ToolCall | None:
    if not isinstance(item, dict):
        return None
    item = item.get("function") if isinstance(item.get("function"), dict) else item
    name = item.get("name")
    if not isinstance(name, str) or not name.strip():
        return None
    arguments = item.get("arguments", item.get("parameters", {}))
    if not isinstance(arguments, str):
        arguments = json.dumps(arguments, ensure_ascii=False)
    return {"type": "function", "function": {"name": name, "arguments": arguments}}
