"""CSV and TSV tables with a header row: one record per row, keyed by the header's column names."""

import csv
import io
from collections.abc import Iterator
from typing import Literal

from backend.dataset.formats.errors import FormatError
from backend.dataset.formats.options import ReadOptions
from backend.dataset.formats.source import Source, lines

SUFFIXES = (".csv", ".tsv", ".tab")
UNIT = "line"

Item = tuple[int, object, int]


def sniff(head: bytes, filename: str) -> bool:
    return filename.lower().endswith(SUFFIXES)


def delimiter_of(head: bytes, filename: str) -> str:
    """A tab for .tsv/.tab; for .csv a comma unless the header line only has tabs, semicolons or pipes."""
    if not filename.lower().endswith(".csv"):
        return "\t"
    header = head.split(b"\n", 1)[0]
    if b"," in header:
        return ","
    counts = {d: header.count(d.encode()) for d in ("\t", ";", "|")}
    best = max(counts, key=lambda d: counts[d])
    return best if counts[best] else ","


def quoting_of(head: bytes, delimiter: str) -> str:
    """'none' when the first lines only parse row-per-line with quote characters taken as text (SST-2 style)."""
    sample = head.decode("utf-8", "replace").splitlines()[:-1] or head.decode("utf-8", "replace").splitlines()
    rows = [line for line in sample if line.strip()]
    if not rows or '"' not in "".join(rows):
        return "minimal"
    try:
        parsed = list(csv.reader(io.StringIO("\n".join(rows)), delimiter=delimiter, strict=True))
        width = len(parsed[0])
        if len(parsed) == len(rows) and all(len(r) == width for r in parsed):
            return "minimal"
    except csv.Error:
        pass
    plain = [line.split(delimiter) for line in rows]
    return "none" if all(len(r) == len(plain[0]) for r in plain) else "minimal"


def read(source: Source, options: ReadOptions) -> Iterator[Item]:
    delimiter = options.delimiter or delimiter_of(b"", source.name)
    quoting: Literal[0, 3] = csv.QUOTE_NONE if options.quoting == "none" else csv.QUOTE_MINIMAL
    # The csv module bounds one field; a row is also bounded line by line by `lines`.
    csv.field_size_limit(max(source.limits.max_line_bytes, 128 * 1024))
    with source.open() as f:
        feed = _Feed(lines(f, source.limits))
        rows = csv.reader(feed, delimiter=delimiter, quoting=quoting, strict=True)
        header = _header(rows, feed)
        if header is None:
            return
        done = rows.line_num
        while True:
            try:
                row = next(rows)
            except StopIteration:
                break
            except csv.Error as exc:
                yield from feed.drain()
                yield done + 1, FormatError(f"CSV: {exc} (try quoting 'none' or 'minimal')"), feed.take_size()
                done = rows.line_num
                continue
            start, done = done + 1, rows.line_num
            yield from feed.drain()
            size = feed.take_size()
            if not row:
                continue
            if len(row) != len(header):
                yield start, FormatError(f"the row has {len(row)} fields, the header has {len(header)}"), size
                continue
            yield start, dict(zip(header, row, strict=True)), size


def _header(rows: Iterator[list[str]], feed: "_Feed") -> list[str] | None:
    try:
        header = next(rows)
    except StopIteration:
        return None
    except csv.Error as exc:
        raise FormatError(f"CSV header: {exc}", line=1) from None
    for lineno, error, _ in feed.drain():
        raise error.at(lineno)  # type: ignore[attr-defined]
    feed.take_size()
    names = [name.strip() or f"column_{i + 1}" for i, name in enumerate(header)]
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise FormatError(f"the header names column '{name}' twice", line=1)
        seen.add(name)
    return names


class _Feed:
    """Lines for csv.reader; encoding errors are held back and handed out with the row they fell in."""

    def __init__(self, numbered: Iterator[tuple[int, str | FormatError, int]]) -> None:
        self.numbered, self.size = numbered, 0
        self.errors: list[Item] = []

    def __iter__(self) -> "_Feed":
        return self

    def __next__(self) -> str:
        lineno, text, size = next(self.numbered)
        self.size += size
        if isinstance(text, FormatError):
            self.errors.append((lineno, text, 0))
            return "\n"
        return text

    def drain(self) -> Iterator[Item]:
        errors, self.errors = self.errors, []
        yield from errors

    def take_size(self) -> int:
        size, self.size = self.size, 0
        return size
