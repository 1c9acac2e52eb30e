"""Torch-free dataset readers: a file → canonical records.

One reader module per file type (`text`, `jsonl`, `json_array`, `csv_table`, `parquet`; each with `sniff` and
`read`), gzip and the size limits in `source`, layouts (alpaca, ShareGPT, ...) → canonical shapes in `layouts`,
layout detection in `plan`, and the validating walk in `summary`. `read_records` is what trainers call.
"""

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from backend.dataset.formats.errors import FormatError, LimitExceeded, UnsupportedFile
from backend.dataset.formats.layouts import LAYOUTS, Record
from backend.dataset.formats.limits import Limits
from backend.dataset.formats.options import ReadOptions, parse_options
from backend.dataset.formats.plan import ACCEPTED, READERS, canonical, make_plan
from backend.dataset.formats.source import Readable, Source
from backend.dataset.formats.summary import Summary, summarize

SHAPES = ("text", "prompt_completion", "messages", "preference", "unpaired_preference", "classification")

__all__ = [
    "ACCEPTED",
    "LAYOUTS",
    "READERS",
    "SHAPES",
    "FormatError",
    "LimitExceeded",
    "Limits",
    "ReadOptions",
    "Readable",
    "Record",
    "Summary",
    "UnsupportedFile",
    "parse_options",
    "read_records",
    "summarize",
]


def read_records(
    path: Path | Readable, filename: str, options: dict[str, Any] | None = None, *, head_only: bool = False
) -> Iterator[Record]:
    """Canonical records of a stored (already validated) dataset file, read with its stored `options`.

    `head_only` is for previews: a whole-file text document is cut after its first 64 KB instead of being
    read into memory. Raises `FormatError` at the first bad record."""
    source = Source(path, filename, Limits.from_settings(), head_only=head_only)
    plan = make_plan(source, parse_options(options), detect=False)
    if plan.problem:
        raise plan.problem
    for _line, record, _size in canonical(plan):
        if isinstance(record, FormatError):
            raise record
        yield record
