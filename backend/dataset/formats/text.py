"""Raw text (.txt, .md): one document per file, per blank-line-separated block (default) or per line."""

from collections.abc import Iterator

from backend.dataset.formats.errors import FormatError, LimitExceeded
from backend.dataset.formats.options import ReadOptions
from backend.dataset.formats.source import Source, lines

SUFFIXES = (".txt", ".md", ".text", ".markdown")
UNIT = "line"
PREVIEW_CHARS = 64 * 1024

Item = tuple[int, object, int]


def sniff(head: bytes, filename: str) -> bool:
    return filename.lower().endswith(SUFFIXES)


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
