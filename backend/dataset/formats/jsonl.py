"""JSON Lines (.jsonl, .ndjson, or a .json file holding one object per line): one record per line."""

import json
from collections.abc import Iterator

from backend.dataset.formats.errors import FormatError
from backend.dataset.formats.options import ReadOptions
from backend.dataset.formats.source import Source, lines
from backend.dataset.formats.values import (
    DECODER,
    SURROGATE_ESCAPE,
    check_depth,
    check_surrogates,
    nested_too_deeply,
)

SUFFIXES = (".jsonl", ".ndjson")
UNIT = "line"

Item = tuple[int, object, int]


def sniff(head: bytes, filename: str) -> bool:
    name = filename.lower()
    if name.endswith(SUFFIXES):
        return True
    if not name.endswith(".json"):
        return False
    # A .json file that is really JSON Lines: a complete object on the first line, another object after it.
    first, _, rest = head.lstrip(b"\xef\xbb\xbf \t\r\n").partition(b"\n")
    if not (first.startswith(b"{") and rest.lstrip().startswith(b"{")):
        return False
    try:
        return isinstance(json.loads(first), dict)
    except (ValueError, RecursionError):
        return False


def read(source: Source, options: ReadOptions) -> Iterator[Item]:
    max_depth = source.limits.max_json_depth
    decode = DECODER.raw_decode
    with source.open() as f:
        for lineno, text, size in lines(f, source.limits):
            if isinstance(text, FormatError):
                yield lineno, text, size
                continue
            if text.isspace():
                continue
            try:
                obj, end = decode(text, 0 if text[0] not in " \t" else len(text) - len(text.lstrip(" \t")))
                if end < len(text) and not text[end:].isspace():
                    raise json.JSONDecodeError("Extra data", text, end)
                if text.count("{") + text.count("[") > max_depth:
                    check_depth(obj, max_depth + 1, max_depth)
                if SURROGATE_ESCAPE.search(text):
                    check_surrogates(obj)
            except json.JSONDecodeError as exc:
                yield lineno, FormatError(f"invalid JSON: {exc.msg} (column {exc.colno})"), size
            except RecursionError:
                yield lineno, FormatError(nested_too_deeply(max_depth)), size
            except FormatError as exc:
                yield lineno, exc, size
            except ValueError as exc:  # NaN / Infinity
                yield lineno, FormatError(f"invalid JSON: {exc}"), size
            else:
                yield lineno, obj, size
