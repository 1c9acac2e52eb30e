"""Plain text: one document per blank-line-separated block."""

from collections.abc import Iterator
from pathlib import Path

from backend.dataset.formats.records import FormatError, Record

SUFFIXES = (".txt", ".md", ".text")


def sniff(head: bytes, filename: str) -> bool:
    if b"\x00" in head:
        return False
    return filename.lower().endswith(SUFFIXES)


def read(path: Path) -> Iterator[tuple[str, Record]]:
    block: list[str] = []
    offset = 0
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                raise FormatError(f"not UTF-8 (byte offset {offset + exc.start})", line=lineno) from None
            offset += len(raw)
            if line.strip():
                block.append(line)
            elif block:
                yield "text", {"text": "".join(block).rstrip("\n")}
                block = []
    if block:
        yield "text", {"text": "".join(block).rstrip("\n")}
