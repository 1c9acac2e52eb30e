"""Raw text (.txt, .md): one document per file, per blank-line-separated block or per line.

Unless the options say, the split is chosen from the file's head: blank lines between its lines make
blank-line blocks the records; a head of many lines and no blank line is one document per line (a corpus of
sentences, one prompt a line), which read as blocks would become one giant record."""

from collections.abc import Iterator
from itertools import islice

from backend.dataset.formats.errors import FormatError, LimitExceeded
from backend.dataset.formats.options import ReadOptions, TextSplit
from backend.dataset.formats.source import Source, lines

SUFFIXES = (".txt", ".md", ".text", ".markdown")
UNIT = "line"
PREVIEW_CHARS = 64 * 1024
SNIFF_LINES = 2000  # lines of the head looked at to choose the split

Item = tuple[int, object, int]


def sniff(head: bytes, filename: str) -> bool:
    return filename.lower().endswith(SUFFIXES)


def choose_split(source: Source) -> tuple[TextSplit, str]:
    """The split the head of the file suggests, and a sentence saying why (for the inspect step)."""
    filled, gaps, pending_gap, seen = 0, 0, False, 0
    try:
        with source.open() as f:
            for _lineno, text, _size in islice(lines(f, source.limits), SNIFF_LINES):
                seen += 1
                if not isinstance(text, str):
                    continue
                if not text.strip():
                    pending_gap = filled > 0
                    continue
                gaps += pending_gap
                pending_gap = False
                filled += 1
    except FormatError:  # a line past a limit, bad gzip: the main pass reports it where it is
        pass
    where = f"the first {seen:,} lines" if seen >= SNIFF_LINES else f"its {seen:,} lines"
    if filled <= 1:
        return "paragraph", "one line of text: one record (text_split 'paragraph')"
    if gaps == 0:
        return "line", (
            f"no blank line between {where}: one record per line (text_split 'line'); "
            "choose 'file' if the whole file is one document"
        )
    return "paragraph", (
        f"blank lines cut {where} into {gaps + 1:,} blocks: one record per block (text_split 'paragraph')"
    )


def long_record_doubt(split: str, records: int, long: int, longest: int, limit: int) -> tuple[float, str]:
    """(the most confidence left, why) when `long` of `records` text records are over long_record_bytes.

    Over-long records usually mean the split does not match the file (a corpus of lines read as one block):
    the confidence falls with the share of them, and never stays at 1."""
    cap = round(max(0.1, 0.9 * (records - long) / max(records, 1)), 2)
    why = (
        f"{long:,} of {records:,} records are over long_record_bytes={limit:,} (the longest {longest:,} bytes): "
        f"is text_split '{split}' right for this file? 'line' makes one record per line"
    )
    return cap, why


def read(source: Source, options: ReadOptions) -> Iterator[Item]:
    split = options.text_split or "paragraph"
    with source.open() as f:
        numbered = _checked(lines(f, source.limits))
        if split == "line":
            yield from _by_line(numbered)
        elif split == "paragraph":
            yield from _by_paragraph(numbered, source.limits.max_line_bytes)
        else:
            yield from _whole(numbered, keep=not (source.validating or source.head_only), stop=source.head_only)


def _checked(numbered: Iterator[tuple[int, str | FormatError, int]]) -> Iterator[tuple[int, str | FormatError, int]]:
    """Lines, with NUL bytes (binary data, or UTF-16 without a byte order mark) turned into errors."""
    for lineno, text, size in numbered:
        if isinstance(text, str) and "\x00" in text:
            text = FormatError("binary data: a NUL byte in a text file (is it UTF-16, or not text at all?)")
        yield lineno, text, size


def _by_line(numbered: Iterator[tuple[int, str | FormatError, int]]) -> Iterator[Item]:
    for lineno, text, size in numbered:
        if isinstance(text, FormatError):
            yield lineno, text, size
        elif text.strip():
            yield lineno, {"text": text.rstrip("\r\n")}, size


def _by_paragraph(numbered: Iterator[tuple[int, str | FormatError, int]], limit: int) -> Iterator[Item]:
    block: list[str] = []
    start, size = 0, 0
    for lineno, text, line_size in numbered:
        if isinstance(text, FormatError):
            yield lineno, text, line_size
            continue
        if text.strip():
            if not block:
                start, size = lineno, 0
            block.append(text)
            size += line_size
            if size > limit:
                raise LimitExceeded(
                    f"a paragraph longer than the limit of {limit} bytes (max_line_bytes); "
                    "read the file with text_split 'line'",
                    line=start,
                )
        elif block:
            yield start, {"text": "".join(block).rstrip("\r\n")}, size
            block = []
    if block:
        yield start, {"text": "".join(block).rstrip("\r\n")}, size


def _whole(numbered: Iterator[tuple[int, str | FormatError, int]], *, keep: bool, stop: bool = False) -> Iterator[Item]:
    """The file as one document; unless `keep`, only its first PREVIEW_CHARS are kept (memory stays flat), and
    with `stop` (a preview of a validated file) reading ends there."""
    parts: list[str] = []
    kept, size, blank = 0, 0, True
    for lineno, text, line_size in numbered:
        if stop and kept >= PREVIEW_CHARS and not blank:
            break
        size += line_size
        if isinstance(text, FormatError):
            yield lineno, text, line_size
            continue
        blank = blank and not text.strip()
        if keep or kept < PREVIEW_CHARS:
            parts.append(text)
            kept += len(text)
    if not blank:
        yield 1, {"text": "".join(parts).rstrip("\r\n")}, size
