"""Conversations: OpenAI-style messages validated, and ShareGPT turns mapped onto them."""

import json
from typing import Any

from backend.dataset.formats.errors import FormatError
from backend.dataset.formats.limits import Limits
from backend.dataset.formats.values import DECODER, check_depth, nested_too_deeply

ROLES = ("system", "user", "assistant", "tool")
# ShareGPT `from` values → roles (function_call is an assistant tool call, observation its result).
SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
    "function_call": "assistant",
    "observation": "tool",
    "tool": "tool",
}
Message = dict[str, Any]


def _show(value: Any) -> str:
    return repr(value if not isinstance(value, str) or len(value) <= 40 else value[:40] + "…")[:60]


def text_of(value: Any, field: str, *, required: bool = True) -> str:
    """A string field; raise naming the field when it is missing or of another type."""
    if value is None:
        if required:
            raise FormatError("missing", field=field)
        return ""
    if not isinstance(value, str):
        raise FormatError(f"expected a string, got {type(value).__name__}", field=field)
    return value


def _content(value: Any, field: str, has_tool_calls: bool) -> str:
    if value is None and has_tool_calls:
        return ""
    if isinstance(value, list):  # content parts: only text parts carry anything a text model can learn
        parts = []
        for i, part in enumerate(value):
            if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                raise FormatError(
                    'only text content parts ({"type": "text", "text": ...}) are supported', field=f"{field}[{i}]"
                )
            parts.append(part["text"])
        return "".join(parts)
    return text_of(value, field)


def message(obj: Any, field: str) -> Message:
    """One OpenAI-style message, checked: role, content, optional weight, tool_calls, name, tool_call_id."""
    if not isinstance(obj, dict):
        raise FormatError(f"expected an object with 'role' and 'content', got {type(obj).__name__}", field=field)
    role = obj.get("role")
    if role is None:
        raise FormatError("missing", field=f"{field}.role")
    if role not in ROLES:
        raise FormatError(f"unknown role {_show(role)} (roles are {', '.join(ROLES)})", field=f"{field}.role")
    tool_calls = obj.get("tool_calls")
    if tool_calls is not None and not (isinstance(tool_calls, list) and all(isinstance(c, dict) for c in tool_calls)):
        raise FormatError("expected a list of tool call objects", field=f"{field}.tool_calls")
    if tool_calls and role != "assistant":
        raise FormatError(f"only assistant messages call tools, not {role!r} ones", field=f"{field}.tool_calls")
    if tool_calls:
        tool_calls = [_call(c, f"{field}.tool_calls[{i}]") for i, c in enumerate(tool_calls)]
    out: Message = {"role": role, "content": _content(obj.get("content"), f"{field}.content", bool(tool_calls))}
    if "weight" in obj and obj["weight"] is not None:
        weight = obj["weight"]
        if type(weight) is not int or weight not in (0, 1):
            raise FormatError(f"expected 0 or 1, got {weight!r}", field=f"{field}.weight")
        out["weight"] = weight
    if tool_calls:
        out["tool_calls"] = tool_calls
    for key in ("name", "tool_call_id"):
        if obj.get(key) is not None:
            out[key] = text_of(obj[key], f"{field}.{key}")
    return out


def messages(value: Any, field: str) -> list[Message]:
    """A non-empty list of messages."""
    if value is None:
        raise FormatError("missing", field=field)
    if not isinstance(value, list):
        raise FormatError(f"expected a list of messages, got {type(value).__name__}", field=field)
    if not value:
        raise FormatError("empty conversation", field=field)
    return [message(m, f"{field}[{i}]") for i, m in enumerate(value)]


def sharegpt_turn(obj: Any, field: str) -> Message:
    """One ShareGPT turn {from, value} (or an OpenAI message) as a message."""
    if isinstance(obj, dict) and "from" not in obj and "role" in obj:
        return message(obj, field)
    if not isinstance(obj, dict):
        raise FormatError(f"expected an object with 'from' and 'value', got {type(obj).__name__}", field=field)
    source = obj.get("from")
    if source is None:
        raise FormatError("missing", field=f"{field}.from")
    role = SHAREGPT_ROLES.get(source) if isinstance(source, str) else None
    if role is None:
        known = ", ".join(k for k in SHAREGPT_ROLES if k not in ("user", "assistant", "tool"))
        raise FormatError(f"unknown role {_show(source)} (expected {known})", field=f"{field}.from")
    value = text_of(obj.get("value"), f"{field}.value")
    out: Message = {"role": role, "content": value}
    if source == "function_call":
        out = {"role": "assistant", "content": "", "tool_calls": _tool_calls(value, f"{field}.value")}
    if "weight" in obj and obj["weight"] is not None:
        out["weight"] = message({"role": role, "content": value, "weight": obj["weight"]}, field)["weight"]
    return out


def sharegpt(value: Any, field: str, system: Any = None) -> list[Message]:
    """A ShareGPT conversation, with a top-level `system` prompt put first."""
    if value is None:
        raise FormatError("missing", field=field)
    if not isinstance(value, list):
        raise FormatError(f"expected a list of turns, got {type(value).__name__}", field=field)
    if not value:
        raise FormatError("empty conversation", field=field)
    turns = [sharegpt_turn(t, f"{field}[{i}]") for i, t in enumerate(value)]
    prompt = text_of(system, "system", required=False)
    return [{"role": "system", "content": prompt}, *turns] if prompt.strip() else turns


def _tool_calls(value: str, field: str) -> list[dict[str, Any]]:
    """A function_call turn's JSON ({name, arguments}, or a list of them) as OpenAI tool calls."""
    calls = _json_in_string(value, field, 'a function_call value must be JSON: {"name": ..., "arguments": ...}')
    calls = calls if isinstance(calls, list) else [calls]
    return [_call(call, field) for call in calls]


def _call(call: Any, field: str) -> dict[str, Any]:
    """One tool call in OpenAI's form, {"type": "function", "function": {"name", "arguments"}} (and its "id"),
    from that form or from a bare {"name", "arguments"} (ShareGPT's). Arguments are kept as a JSON string, as
    OpenAI writes them; an object is serialized (the renderer parses it back for chat templates)."""
    function = call.get("function", call) if isinstance(call, dict) else None
    if not (isinstance(function, dict) and isinstance(function.get("name"), str) and function["name"].strip()):
        raise FormatError("a function call needs a 'name'", field=field)
    arguments = function.get("arguments", function.get("parameters", {}))
    if not isinstance(arguments, str):
        arguments = json.dumps(arguments, ensure_ascii=False)
    out: dict[str, Any] = {"type": "function", "function": {"name": function["name"], "arguments": arguments}}
    if isinstance(call, dict) and call.get("id") is not None:
        out["id"] = text_of(call["id"], f"{field}.id")
    return out


def tools(value: Any, field: str = "tools") -> list[Any] | None:
    """Tool definitions: a list of objects, or a JSON string of one (as ShareGPT files store them), each put in
    OpenAI's form {"type": "function", "function": {"name", "description", "parameters"}}, which chat templates
    expect; a bare {"name", ...} definition is wrapped."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        value = _json_in_string(value, field, "expected a list of tool definitions (or a JSON string of one)")
    if not (isinstance(value, list) and all(isinstance(t, dict) for t in value)):
        raise FormatError("expected a list of tool definitions", field=field)
    return [_definition(t, f"{field}[{i}]") for i, t in enumerate(value)] or None


def _definition(tool: dict[str, Any], field: str) -> dict[str, Any]:
    function = tool.get("function") if "function" in tool else tool
    if not (isinstance(function, dict) and isinstance(function.get("name"), str) and function["name"].strip()):
        raise FormatError("a tool definition needs a 'name' (or 'function': {'name': ...})", field=field)
    return tool if "function" in tool else {"type": "function", "function": tool}


def _json_in_string(value: str, field: str, invalid: str) -> Any:
    """JSON held in a string field, parsed like a record: real JSON only, nesting within max_json_depth."""
    limit = Limits.from_settings().max_json_depth
    try:
        parsed, end = DECODER.raw_decode(value, len(value) - len(value.lstrip()))
        if value[end:].strip():
            raise ValueError("extra data")
    except RecursionError:
        raise FormatError(nested_too_deeply(limit), field=field) from None
    except ValueError:
        raise FormatError(invalid, field=field) from None
    try:
        check_depth(parsed, value.count("{") + value.count("["), limit)
    except FormatError as exc:
        raise FormatError(exc.message, field=field) from None
    return parsed
