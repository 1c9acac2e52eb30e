"""What every storage backend offers: objects under string keys ("datasets/3/ab12-train.jsonl"), never paths.

A key is a relative POSIX path: segments joined by "/", no "." or ".." segment, no leading "/". A "tree" is the
set of objects under a key prefix (a Hugging Face model directory, a checkpoint): folders exist only as prefixes.
A missing object raises FileNotFoundError, so callers that already handle a missing file need nothing new.
"""

import builtins
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Protocol


class BadKey(ValueError):
    """A key that is not a clean relative POSIX path (a bug in the caller, never user input)."""


def check_key(key: str) -> str:
    """`key` if it is a clean relative POSIX path; BadKey otherwise."""
    parts = PurePosixPath(key).parts
    if not key or key.startswith("/") or "\\" in key or any(p in ("", ".", "..") for p in key.split("/")):
        raise BadKey(f"not a storage key: {key!r}")
    assert parts  # a non-empty relative path has at least one part
    return key


def join(*parts: str) -> str:
    """Keys joined with "/" (the result checked). A legacy absolute first part (a row that names a folder outside
    the data directory, which only local storage reads) stays absolute."""
    key = "/".join(p.strip("/") for p in parts if p)
    return "/" + key if parts and parts[0].startswith("/") else check_key(key)


def files_under(folder: Path) -> Iterator[tuple[str, Path]]:
    """(relative key, file) of every file below `folder`, in a stable order."""
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            yield path.relative_to(folder).as_posix(), path


class Storage(Protocol):
    """One place that turns keys into bytes: a local folder (`LocalStorage`) or an S3 bucket (`S3Storage`)."""

    def put_file(self, key: str, source: Path, *, move: bool = False) -> None:
        """Store the local file `source` under `key`, whole or not at all (`move`: `source` is consumed)."""
        ...

    def put_stream(self, key: str, stream: BinaryIO) -> int:
        """Store what `stream` reads under `key`, whole or not at all; the number of bytes."""
        ...

    def put_tree(self, prefix: str, source: Path, *, move: bool = False, last: tuple[str, ...] = ()) -> None:
        """Store every file under the folder `source` below `prefix`, replacing what was there. Files named in
        `last` (a completion marker) are stored after all the others, so a reader that sees one sees the rest."""
        ...

    def open(self, key: str) -> AbstractContextManager[BinaryIO]:
        """The object's bytes as a stream (read sequentially; S3 streams are not seekable)."""
        ...

    def fetch(self, key: str, target: Path) -> None:
        """Copy the object to the local file `target` (written aside, then renamed: never half a file)."""
        ...

    def fetch_tree(self, prefix: str, target: Path) -> int:
        """Copy the tree under `prefix` into the local folder `target`; how many files."""
        ...

    def exists(self, key: str) -> bool:
        """Whether an object (not a prefix) is stored under `key`."""
        ...

    def size(self, key: str) -> int:
        """The object's size in bytes."""
        ...

    def version(self, key: str, *, tree: bool = False) -> str:
        """What changes whenever the object (or, with `tree`, any object below the prefix) is written again: its
        ETag and time on S3, size and time on disk. FileNotFoundError when there is none."""
        ...

    def list(self, prefix: str) -> builtins.list[str]:
        """Every key below `prefix` ("a/b" lists "a/b/..."), sorted."""
        ...

    def scan(self, prefix: str) -> dict[str, tuple[int, float]]:
        """`list` with each object's size in bytes and last-modified time (a POSIX timestamp)."""
        ...

    def move(self, source: str, dest: str) -> None:
        """Store the object `source` under `dest` instead (a rename on disk, a server-side copy on S3)."""
        ...

    def delete(self, key: str) -> None:
        """Remove one object; a missing one is not an error."""
        ...

    def delete_prefix(self, prefix: str) -> None:
        """Remove every object below `prefix`."""
        ...

    def presigned_url(self, key: str, *, filename: str, expires_seconds: int = 3600) -> str | None:
        """A URL a browser can download the object from directly, or None where the backend has none."""
        ...

    def local_path(self, key: str) -> Path | None:
        """The object's own file (or a tree's folder) on this machine, or None when it lives elsewhere."""
        ...

    def start_multipart(self, key: str) -> str:
        """Begin an upload in parts (the object appears only at `complete_multipart`); its upload id."""
        ...

    def put_part(self, key: str, upload_id: str, number: int, data: bytes | BinaryIO) -> str:
        """Store part `number` (1, 2, ...; every part but the last at least 5 MiB on S3), given whole or as a
        seekable stream read from its start; its ETag."""
        ...

    def complete_multipart(self, key: str, upload_id: str, parts: builtins.list[tuple[int, str]]) -> None:
        """Join the parts (number, ETag) into the object under `key`."""
        ...

    def list_parts(self, key: str, upload_id: str) -> builtins.list[tuple[int, str, int]]:
        """(number, ETag, size) of the parts stored so far, by number."""
        ...

    def abort_multipart(self, key: str, upload_id: str) -> None:
        """Drop an unfinished multipart upload and its parts."""
        ...
