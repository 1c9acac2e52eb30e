"""Torch-free dataset readers: a file → canonical records (`text`, or `prompt`/`completion`).

Each reader module has `sniff(head: bytes, filename: str) -> bool` and `read(path) -> Iterator[Record]`
(raising `FormatError` that names the line and the problem). `summarize` walks the whole file once.
"""

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

from backend.dataset.formats import json_array, jsonl, text
from backend.dataset.formats.records import SHAPES, FormatError, Record

# Order matters: the first reader that sniffs the file reads it.
READERS: dict[str, ModuleType] = {"jsonl": jsonl, "json": json_array, "text": text}

__all__ = ["READERS", "SHAPES", "FormatError", "Record", "Summary", "read_records", "summarize"]


@dataclass
class Summary:
    reader: str
    format: str  # layout: text, jsonl_text, alpaca
    shape: str  # canonical shape: text, prompt_completion
    record_count: int
    preview: list[Record] = field(default_factory=list)


def pick_reader(path: Path, filename: str) -> str:
    with path.open("rb") as f:
        head = f.read(64 * 1024)
    if not head.strip():
        raise FormatError("the file is empty", line=1)
    for name, module in READERS.items():
        if module.sniff(head, filename):
            return name
    raise FormatError(
        "unrecognized file: expected .txt/.md text, .jsonl (text or alpaca records) or a .json array of them"
    )


def summarize(path: Path, filename: str, preview_rows: int = 5) -> Summary:
    """Validate every record; return the layout, shape, count and first rows. Raises FormatError."""
    reader = pick_reader(path, filename)
    count, preview, layouts = 0, [], set()
    for layout, record in READERS[reader].read(path):
        layouts.add(layout)
        if count < preview_rows:
            preview.append(record)
        count += 1
    if count == 0:
        raise FormatError("the file holds no records", line=1)
    (layout,) = layouts  # readers fix the layout on the first record
    return Summary(reader, layout, SHAPES[layout], count, preview)


def read_records(path: Path, filename: str) -> Iterator[Record]:
    """Canonical records of a stored (already validated) dataset file."""
    reader = pick_reader(path, filename)
    for _layout, record in READERS[reader].read(path):
        yield record
