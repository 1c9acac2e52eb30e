"""A stored object as the dataset readers see a file: a name, a size, and its bytes as a stream. Validation and
previews read an object in S3 this way, without a local copy (parquet, which needs random access, gets one)."""

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from backend.storage import get_storage, scratch_dir


class StoredFile:
    def __init__(self, key: str) -> None:
        self.key = key
        self.size = get_storage().size(key)

    @contextmanager
    def open(self) -> Iterator[BinaryIO]:
        with get_storage().open(self.key) as stream:
            yield stream

    @property
    def scratch(self) -> Path:
        """Where a reader that needs a seekable copy may write one."""
        return scratch_dir()


def readable(key: str) -> Path | StoredFile:
    """What the dataset readers read `key` from: its own file with local storage, else the object streamed."""
    local = get_storage().local_path(key)
    return local if local is not None else StoredFile(key)
