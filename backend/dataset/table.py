"""Records as a table for a page: every column any record has, each cell one line of plain text.

Records of one dataset need not share their keys (a `tools` column on some chat records only, an optional
`system`), and their values may be nested. The columns are the union of the records' keys in first-seen order;
a cell is a string (escaped by the template like any text), empty where the record has no such key."""

import json
from dataclasses import dataclass
from typing import Any

MAX_COLUMNS = 50


@dataclass(frozen=True)
class Table:
    columns: list[str]
    rows: list[list[str]]


def columns_of(records: list[dict[str, Any]], limit: int = MAX_COLUMNS) -> list[str]:
    """The union of the records' keys, in the order they are first seen."""
    seen: dict[str, None] = {}
    for record in records:
        seen.update((str(key), None) for key in record)
    return list(seen)[:limit]


def cell_text(value: Any) -> str:
    """One value as text: strings as they are, a conversation as "role: content" lines, the rest compact JSON."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if _is_conversation(value):
        return "\n".join(_turn(m) for m in value)
    return compact_json(value)


def compact_json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)


def table_of(records: list[dict[str, Any]]) -> Table:
    """The records as rows of text under the union of their columns."""
    columns = columns_of(records)
    return Table(columns, [[cell_text(r.get(c)) if c in r else "" for c in columns] for r in records])


def _is_conversation(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(m, dict) and "role" in m for m in value)


def _turn(message: dict[str, Any]) -> str:
    content = message.get("content")
    text = content if isinstance(content, str) else compact_json(content) if content is not None else ""
    # A tool call has no text of its own: without its calls the turn would read as an empty answer.
    calls = message.get("tool_calls")
    extra = f"[tool_calls: {compact_json(calls)}]" if calls else ""
    return " ".join(part for part in (f"{message.get('role')}:", text, extra) if part)
