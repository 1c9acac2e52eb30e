"""JSON Lines: one object per line, `text` records or alpaca records (`instruction`, `input`, `output`)."""

import json
from collections.abc import Iterator
from pathlib import Path

from backend.dataset.formats.records import FormatError, Record, layout_of, to_record


def sniff(head: bytes, filename: str) -> bool:
    if filename.lower().endswith(".jsonl"):
        return True
    first = head.lstrip().split(b"\n", 1)[0].strip()
    return first.startswith(b"{") and first.endswith(b"}") and not filename.lower().endswith(".json")


def read(path: Path) -> Iterator[tuple[str, Record]]:
    layout: str | None = None
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                raise FormatError(f"not UTF-8 (byte {exc.start} of the line)", line=lineno) from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise FormatError(f"invalid JSON: {exc.msg} at column {exc.colno}", line=lineno) from None
            except RecursionError:
                raise FormatError("JSON nested too deeply", line=lineno) from None
            if layout is None:
                layout = layout_of(obj)
                if layout is None:
                    raise FormatError(
                        "records need a 'text' field, or 'instruction' and 'output' (alpaca)", line=lineno
                    )
            yield layout, to_record(obj, layout, lineno)
