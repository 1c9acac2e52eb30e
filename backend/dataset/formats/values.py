"""Checks on parsed values that the JSON parser lets through: nesting depth, lone surrogates, display."""

import json
import math
import re
from typing import Any

from backend.dataset.formats.errors import FormatError

# A \uD800-\uDFFF escape in the raw text: only then can a parsed string hold a lone surrogate.
SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
DISPLAY_CHARS = 500


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


# Python's json accepts NaN and Infinity; a dataset file must be real JSON.
DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def nested_too_deeply(limit: int) -> str:
    return f"JSON nested too deeply: over the limit of {limit} levels (max_json_depth)"


def depth(value: Any) -> int:
    """Nesting depth of objects/arrays (a scalar is 0), without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, level = stack.pop()
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else None
        if children is None:
            continue
        deepest = max(deepest, level)
        stack.extend((child, level + 1) for child in children if isinstance(child, dict | list))
    return deepest


def check_depth(value: Any, brackets: int, limit: int) -> None:
    """Raise when nested deeper than `limit`; `brackets` (count of '{' and '[' in the text) skips most walks."""
    if brackets > limit and depth(value) > limit:
        raise FormatError(nested_too_deeply(limit))


def lone_surrogate(value: Any, path: str = "") -> str | None:
    """The path of the first string holding a lone surrogate (valid JSON, not valid text), or None."""
    stack = [(value, path)]
    while stack:
        node, where = stack.pop()
        if isinstance(node, str):
            try:
                node.encode("utf-8")
            except UnicodeEncodeError:
                return where or "(value)"
        elif isinstance(node, dict):
            stack.extend((v, f"{where}.{k}" if where else str(k)) for k, v in node.items())
            stack.extend((k, where or "(key)") for k in node)
        elif isinstance(node, list):
            stack.extend((v, f"{where}[{i}]") for i, v in enumerate(node))
    return None


def check_surrogates(value: Any) -> None:
    where = lone_surrogate(value)
    if where is not None:
        raise FormatError("invalid unicode (lone surrogate escape)", field=where)


def display(value: Any, chars: int = DISPLAY_CHARS) -> Any:
    """A JSON-safe copy for showing: long strings cut, non-finite floats as None, odd types as text."""
    if isinstance(value, str):
        value = value if len(value) <= chars else value[:chars] + "…"
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, bool | int) or value is None:
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {clean_name(str(k)): display(v, chars) for k, v in list(value.items())[:100]}
    if isinstance(value, list | tuple):
        return [display(v, chars) for v in value[:100]]
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    return display(str(value), chars)


def clean_name(name: str, chars: int = 100) -> str:
    """A column name safe to store and show: valid UTF-8, no control characters, bounded."""
    safe = name.encode("utf-8", "backslashreplace").decode("utf-8")
    return re.sub(r"[\x00-\x1f\x7f]", "?", safe)[:chars]
