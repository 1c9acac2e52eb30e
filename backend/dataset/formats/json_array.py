"""A JSON array of records, or an object holding one (`{"data": [...]}`), streamed element by element.

The whole file is never held: a sliding window of decoded text is parsed one element at a time with the C
decoder (`raw_decode`), so memory stays at about one chunk plus the largest record, and every error names
the exact line.
"""

import codecs
import json
import re
from collections.abc import Iterator
from typing import Any, BinaryIO

from backend.dataset.formats.errors import FormatError, LimitExceeded
from backend.dataset.formats.limits import Limits
from backend.dataset.formats.options import ReadOptions
from backend.dataset.formats.source import UTF8_BOM, Source, check_not_utf16
from backend.dataset.formats.values import (
    DECODER,
    SURROGATE_ESCAPE,
    check_depth,
    check_surrogates,
    nested_too_deeply,
)

SUFFIXES = (".json",)
UNIT = "line"
CHUNK = 1 << 20
WHITESPACE = re.compile(r"[ \t\n\r]*")

Item = tuple[int, object, int]


def sniff(head: bytes, filename: str) -> bool:
    return filename.lower().endswith(SUFFIXES)


class _Window:
    """Decoded text of a stream, read a chunk at a time; `pos` is the parse position in `text`."""

    def __init__(self, stream: BinaryIO, limits: Limits) -> None:
        self.stream, self.limits = stream, limits
        self.decoder = codecs.getincrementaldecoder("utf-8")()
        self.text, self.pos, self.eof = "", 0, False
        self.bytes_in = 0  # bytes fed to the decoder so far
        self.line_pos, self.line_no = 0, 1  # line number at text[line_pos]

    def more(self) -> bool:
        """Append the next chunk; False at the end of the file."""
        if self.eof:
            return False
        chunk = self.stream.read(CHUNK)
        if self.bytes_in == 0:
            check_not_utf16(chunk)
            if chunk.startswith(UTF8_BOM):
                chunk, self.bytes_in = chunk[3:], 3
        pending = len(self.decoder.getstate()[0])
        try:
            self.text += self.decoder.decode(chunk, final=not chunk)
        except UnicodeDecodeError as exc:
            offset = self.bytes_in - pending + exc.start
            line = self.line_at(len(self.text))
            raise FormatError(f"not UTF-8: invalid byte at byte offset {offset}", line=line) from None
        self.bytes_in += len(chunk)
        self.eof = not chunk
        return True

    def compact(self) -> None:
        """Drop text already parsed (only between values, so no position held elsewhere moves)."""
        if self.pos > CHUNK:
            self.line_at(self.pos)
            self.text, self.line_pos, self.pos = self.text[self.pos :], 0, 0

    def line_at(self, pos: int) -> int:
        if pos >= self.line_pos:
            self.line_no += self.text.count("\n", self.line_pos, pos)
        else:
            self.line_no -= self.text.count("\n", pos, self.line_pos)
        self.line_pos = pos
        return self.line_no

    def peek(self) -> str:
        """Skip whitespace; the next character, or '' at the end of the file."""
        while True:
            self.pos = WHITESPACE.match(self.text, self.pos).end()  # type: ignore[union-attr]
            if self.pos < len(self.text):
                return self.text[self.pos]
            if not self.more():
                return ""

    def expect(self, chars: str, what: str) -> str:
        c = self.peek()
        if c == "" or c not in chars:
            found = f"found {c!r}" if c else "the file ends"
            raise FormatError(f"invalid JSON: expected {what}, {found}", line=self.line_at(self.pos))
        self.pos += 1
        return c

    def value(self) -> tuple[Any, int, int]:
        """Decode the JSON value at `pos`: (value, start, end); reads on while the value may be cut short."""
        self.peek()
        start = self.pos
        while True:
            try:
                obj, end = DECODER.raw_decode(self.text, start)
            except json.JSONDecodeError as exc:
                cut = exc.msg.startswith("Unterminated string") or exc.pos >= len(self.text) - 8
                if not (cut and self._grow(start)):
                    line = self.line_at(exc.pos)
                    column = exc.pos - (self.text.rfind("\n", 0, exc.pos) + 1) + 1
                    raise FormatError(f"invalid JSON: {exc.msg} (column {column})", line=line) from None
                continue
            except RecursionError:
                raise FormatError(
                    nested_too_deeply(self.limits.max_json_depth),
                    line=self.line_at(start),
                ) from None
            except ValueError as exc:  # NaN / Infinity
                raise FormatError(f"invalid JSON: {exc}", line=self.line_at(start)) from None
            if end == len(self.text) and self._grow(start):
                continue  # a number at the end of the window may go on in the next chunk
            self.pos = end
            return obj, start, end

    def _grow(self, start: int) -> bool:
        limit = self.limits.max_line_bytes
        if len(self.text) - start > limit:
            raise LimitExceeded(
                f"a JSON record longer than the limit of {limit} bytes (max_line_bytes)", line=self.line_at(start)
            )
        return self.more()


def read(source: Source, options: ReadOptions) -> Iterator[Item]:
    with source.open() as f:
        window = _Window(f, source.limits)
        first = window.peek()
        if first == "{":
            yield from _wrapped(window)
        elif first == "[":
            window.pos += 1
            yield from _elements(window)
        elif first == "":
            raise FormatError("the file is empty", line=1)
        else:
            raise FormatError(
                f"expected a JSON array of records (or an object holding one), found {first!r}",
                line=window.line_at(window.pos),
            )
        if window.peek() != "":
            raise FormatError("invalid JSON: more data after the end of the document", line=window.line_at(window.pos))


def _elements(window: _Window) -> Iterator[Item]:
    """The elements of an array whose '[' was just read, then its ']'."""
    max_depth = window.limits.max_json_depth
    if window.peek() == "]":
        window.pos += 1
        return
    while True:
        window.compact()
        obj, start, end = window.value()
        text = window.text
        line = window.line_at(start)
        try:
            check_depth(obj, text.count("{", start, end) + text.count("[", start, end), max_depth)
            if SURROGATE_ESCAPE.search(text, start, end):
                check_surrogates(obj)
        except FormatError as exc:
            yield line, exc, end - start
        else:
            yield line, obj, end - start
        if window.expect(",]", "',' or ']' after a record") == "]":
            return


def _wrapped(window: _Window) -> Iterator[Item]:
    """Records of an object holding them in one array, e.g. {"version": 1, "data": [...]}."""
    window.pos += 1
    keys: list[str] = []
    found = False
    if window.peek() == "}":
        window.pos += 1
    else:
        while True:
            window.compact()
            window.expect('"', "a string key")  # JSON object keys are strings: {1: [...]} is not JSON
            window.pos -= 1
            key, _, _ = window.value()
            keys.append(str(key))
            window.expect(":", "':' after a key")
            # The records are the first array whose elements are objects; other values are skipped.
            if not found and window.peek() == "[" and _opens_objects(window):
                found = True
                window.pos += 1
                yield from _elements(window)
            else:
                window.value()
            if window.expect(",}", "',' or '}'") == "}":
                break
    if not found:
        shown = ", ".join(repr(k) for k in keys[:10]) or "none"
        raise FormatError(
            f"expected a JSON array of records, or an object holding one; this object has no array of "
            f"objects (keys: {shown})",
            line=1,
        )


def _opens_objects(window: _Window) -> bool:
    """Whether the array at `pos` starts with an object (or is empty)."""
    after = window.pos + 1
    while True:
        after = WHITESPACE.match(window.text, after).end()  # type: ignore[union-attr]
        if after < len(window.text):
            return window.text[after] in "{]"
        if not window.more():
            return False
