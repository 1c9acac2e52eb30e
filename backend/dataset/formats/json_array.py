"""A JSON array of records (alpaca's usual shape, or `text` objects)."""

import json
from collections.abc import Iterator
from pathlib import Path

from backend.dataset.formats.records import FormatError, Record, layout_of, to_record


def sniff(head: bytes, filename: str) -> bool:
    return filename.lower().endswith(".json") or head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"[")


def _line_of(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def read(path: Path) -> Iterator[tuple[str, Record]]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise FormatError(f"not UTF-8 (byte offset {exc.start})") from None
    decoder = json.JSONDecoder()
    try:
        data, _ = decoder.raw_decode(text, len(text) - len(text.lstrip()))
    except json.JSONDecodeError as exc:
        raise FormatError(f"invalid JSON: {exc.msg}", line=exc.lineno) from None
    except RecursionError:
        raise FormatError("JSON nested too deeply", line=1) from None
    if not isinstance(data, list):
        raise FormatError(f"expected a JSON array of records, got {type(data).__name__}", line=1)
    # Positions of the records, so errors name the line where each one starts.
    starts = _record_starts(text)
    layout: str | None = None
    for i, obj in enumerate(data):
        line = starts[i] if i < len(starts) else 1
        if layout is None:
            layout = layout_of(obj)
            if layout is None:
                raise FormatError(
                    f"record {i + 1} needs a 'text' field, or 'instruction' and 'output' (alpaca)", line=line
                )
        yield layout, to_record(obj, layout, line)


def _record_starts(text: str) -> list[int]:
    """Line number where each top-level array element begins (a small scanner, strings aware)."""
    starts: list[int] = []
    depth, in_str, escape, line = 0, False, False, 1
    for ch in text:
        if ch == "\n":
            line += 1
        if in_str:
            if escape:
                escape = False
            elif ch == "\\":
                escape = True
            elif ch == '"':
                in_str = False
            continue
        if ch == '"':
            in_str = True
            if depth == 1:
                starts.append(line)
        elif ch in "[{":
            if depth == 1:
                starts.append(line)
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif depth == 1 and not ch.isspace() and ch != "," and (not starts or starts[-1] != line):
            starts.append(line)
    return starts
