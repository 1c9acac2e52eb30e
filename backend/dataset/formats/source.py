"""Opening an uploaded file: gzip (with a bomb guard), a UTF-8 check, and lines read with a bounded readline."""

import gzip
import io
import shutil
import tempfile
import zlib
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import BinaryIO, Protocol

from backend.dataset.formats.errors import FormatError, LimitExceeded
from backend.dataset.formats.limits import Limits

GZIP_MAGIC = b"\x1f\x8b"
UTF8_BOM = b"\xef\xbb\xbf"
UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
HEAD_BYTES = 64 * 1024
CHUNK = 1 << 20
# Below this much output the ratio guard stays quiet: small files can compress wildly and are harmless.
RATIO_FLOOR = 8 * 1024**2

# One line of a text file: (line number, decoded text or the encoding error, size in bytes).
Line = tuple[int, str | FormatError, int]


class _GuardedGzip(io.RawIOBase):
    """Decompressed bytes of a gzip stream, refusing to produce more than the limits allow."""

    def __init__(self, raw: BinaryIO, limits: Limits) -> None:
        self.raw, self.limits, self.produced = raw, limits, 0
        self.gz = gzip.GzipFile(fileobj=raw, mode="rb")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: "bytearray | memoryview") -> int:  # type: ignore[override]
        try:
            n = self.gz.readinto(buffer)
        except (OSError, EOFError, zlib.error) as exc:
            raise FormatError(f"corrupt gzip data: {exc or 'truncated'}") from None
        self.produced += n
        limits = self.limits
        if self.produced > limits.max_decompressed_bytes:
            raise LimitExceeded(
                f"decompresses to more than the limit of {limits.max_decompressed_bytes} bytes (max_decompressed_bytes)"
            )
        if self.produced > RATIO_FLOOR and self.produced > limits.max_compression_ratio * max(self.raw.tell(), 1):
            raise LimitExceeded(
                f"decompresses more than {limits.max_compression_ratio:g} times its compressed size "
                "(max_compression_ratio): refused as a likely gzip bomb"
            )
        return n


class Readable(Protocol):
    """A file that is not on this disk (a stored object): its size, its bytes as a stream, and where a reader that
    needs a seekable copy may write one."""

    size: int

    def open(self) -> AbstractContextManager[BinaryIO]: ...

    @property
    def scratch(self) -> Path: ...


class Source:
    """An uploaded file (on disk, or a `Readable`): its name without `.gz`, and a way to open its (decompressed)
    bytes."""

    def __init__(
        self,
        path: Path | Readable,
        filename: str,
        limits: Limits,
        *,
        validating: bool = False,
        head_only: bool = False,
    ) -> None:
        # validating: read everything, keep only what checks need; head_only: a preview, records may be cut.
        self.path, self.limits, self.validating, self.head_only = path, limits, validating, head_only
        with self._raw() as f:
            magic = f.read(2)
        named_gz = filename.lower().endswith(".gz")
        if named_gz and magic != GZIP_MAGIC:
            raise FormatError("the name ends in .gz but the file is not gzip data", line=1)
        self.compressed = named_gz or magic == GZIP_MAGIC
        self.name = filename[:-3] if named_gz else filename
        self.size = path.stat().st_size if isinstance(path, Path) else path.size

    def _raw(self) -> AbstractContextManager[BinaryIO]:
        return self.path.open("rb") if isinstance(self.path, Path) else self.path.open()

    @contextmanager
    def open(self) -> Iterator[BinaryIO]:
        """The file's bytes, decompressed when gzipped."""
        with self._raw() as raw:
            if not self.compressed:
                yield raw
                return
            with io.BufferedReader(_GuardedGzip(raw, self.limits), buffer_size=CHUNK) as stream:
                yield stream  # type: ignore[misc]

    def head(self, size: int = HEAD_BYTES) -> bytes:
        with self.open() as f:
            return f.read(size)

    @contextmanager
    def local_path(self) -> Iterator[Path]:
        """A seekable plain file with the content (a decompressed temporary copy when gzipped)."""
        if not self.compressed and isinstance(self.path, Path):
            yield self.path
            return
        where = self.path.parent if isinstance(self.path, Path) else self.path.scratch
        with tempfile.NamedTemporaryFile(dir=where, suffix=".unpacked") as tmp:
            with self.open() as f:
                shutil.copyfileobj(f, tmp, CHUNK)
            tmp.flush()
            yield Path(tmp.name)


def check_not_utf16(head: bytes) -> None:
    if head.startswith(UTF16_BOMS):
        raise FormatError("not UTF-8: the file is UTF-16 (byte order mark at byte offset 0); save it as UTF-8", line=1)


def lines(stream: BinaryIO, limits: Limits) -> Iterator[Line]:
    """Decoded lines; a line over `max_line_bytes` stops the read, bad UTF-8 is an error of that line only."""
    limit, offset, lineno = limits.max_line_bytes, 0, 0
    readline = stream.readline
    while raw := readline(limit + 1):
        lineno += 1
        if len(raw) > limit:
            raise LimitExceeded(f"longer than the limit of {limit} bytes (max_line_bytes)", line=lineno)
        size = len(raw)
        if lineno == 1:
            check_not_utf16(raw)
            if raw.startswith(UTF8_BOM):
                raw, offset = raw[3:], 3
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            yield lineno, FormatError(f"not UTF-8: invalid byte at byte offset {offset + exc.start}"), size
        else:
            yield lineno, text, size
        offset += len(raw)
