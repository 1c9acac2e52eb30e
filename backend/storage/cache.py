"""A local copy of what a process reads from remote storage, bounded in size, least recently used evicted.

Training and conversion need real files (safetensors are memory-mapped, tokenizers read from a folder), so a
worker reads a dataset, a model or a checkpoint through here: the first use downloads it, later uses find it.
With local storage there is nothing to copy: the object's own file is handed out.

Each cached entry (a file or a whole tree) has a stamp file whose modification time is its last use; when the
cache passes its limit the oldest entries go. A key's contents can change (checkpoint-N is written again after a
resume from an older checkpoint; with SQLite a model id can be reused), so every use asks the storage for the
key's version (one HEAD or LIST) and an entry is named by key and version: a changed object is a new entry, and a
process still using the old copy keeps it until the LRU takes it.

Entries in use are pinned: inside `pinned()` every entry handed out holds a shared flock on its stamp until the
block ends, and eviction takes each stamp's exclusive lock without waiting, skipping what it cannot lock (a
training job's base model, a playground's weights while they load). A cache-wide flock keeps concurrent processes
on one machine (data-parallel ranks, the analysis worker) from fetching the same entry twice.
"""

import fcntl
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import IO

from backend.storage.base import Storage

# The stamps this context holds shared locks on (entry name → open stamp), or None outside `pinned()`.
_pins: ContextVar[dict[str, IO[bytes]] | None] = ContextVar("cache_pins", default=None)


@contextmanager
def pinned() -> Iterator[None]:
    """Keep every cache entry this thread is handed inside the block from eviction until the block ends (in
    every process sharing the cache folder). Nested blocks join the outermost."""
    if _pins.get() is not None:
        yield
        return
    held: dict[str, IO[bytes]] = {}
    token = _pins.set(held)
    try:
        yield
    finally:
        _pins.reset(token)
        for stamp in held.values():
            stamp.close()  # releases the shared lock


def _entry_name(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:24]


def folder_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


class Cache:
    def __init__(self, storage: Storage, root: Path, max_bytes: int) -> None:
        self.storage, self.root, self.max_bytes = storage, root, max_bytes

    def file(self, key: str) -> Path:
        """A local file with the object's bytes (its own file with local storage)."""
        return self._get(key, tree=False)

    def tree(self, prefix: str) -> Path:
        """A local folder with the tree under `prefix` (its own folder with local storage). The folder keeps
        the prefix's last segment as its name (checkpoint-40 stays checkpoint-40)."""
        return self._get(prefix, tree=True)

    def _get(self, key: str, *, tree: bool) -> Path:
        own = self.storage.local_path(key)
        if own is not None:
            return own
        version = self.storage.version(key, tree=tree)  # FileNotFoundError for a missing key
        name = _entry_name(f"{'tree' if tree else 'file'}:{key}:{version}")
        entry = self.root / "objects" / name
        target = entry / key.rsplit("/", 1)[-1]
        stamp = self.root / "stamps" / f"{name}.json"
        with self._locked():
            if stamp.is_file():
                os.utime(stamp)  # used now: the last to go
            else:
                self._fetch(key, tree, version, entry, target, stamp)
            self._pin(name, stamp)
            self._evict(keep=name)
        return target

    def _fetch(self, key: str, tree: bool, version: str, entry: Path, target: Path, stamp: Path) -> None:
        shutil.rmtree(entry, ignore_errors=True)  # a fetch cut short
        entry.mkdir(parents=True)
        try:
            self.storage.fetch_tree(key, target) if tree else self.storage.fetch(key, target)
        except BaseException:
            shutil.rmtree(entry, ignore_errors=True)
            raise
        stamp.parent.mkdir(parents=True, exist_ok=True)
        stamp.write_text(json.dumps({"key": key, "tree": tree, "version": version, "bytes": folder_bytes(target)}))

    def _pin(self, name: str, stamp: Path) -> None:
        held = _pins.get()
        if held is None or name in held:
            return
        handle = stamp.open("rb")
        # Taken under the cache-wide lock, which eviction holds too: never waits, never races an eviction.
        fcntl.flock(handle.fileno(), fcntl.LOCK_SH)
        held[name] = handle

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with (self.root / ".lock").open("a") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            yield

    def entries(self) -> list[tuple[float, str, int]]:
        """(last use, entry name, bytes) of every cached entry, least recently used first."""
        found = []
        for stamp in (self.root / "stamps").glob("*.json"):
            try:
                size = int(json.loads(stamp.read_text())["bytes"])
                found.append((stamp.stat().st_mtime, stamp.stem, size))
            except (OSError, ValueError, KeyError):
                continue
        return sorted(found)

    def _evict(self, keep: str) -> None:
        """Remove the least recently used entries until the cache is within its limit (never `keep`, the entry
        being handed out, nor an entry pinned by any process: the cache may stay over its limit while they are
        in use; one entry bigger than the limit is still served)."""
        entries = self.entries()
        total = sum(size for _, _, size in entries)
        for _, name, size in entries:
            if total <= self.max_bytes:
                break
            if name != keep and self._remove_unpinned(name):
                total -= size

    def _remove_unpinned(self, name: str) -> bool:
        stamp = self.root / "stamps" / f"{name}.json"
        try:
            handle = stamp.open("rb")
        except FileNotFoundError:
            return False
        with handle:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False  # in use
            stamp.unlink(missing_ok=True)
            shutil.rmtree(self.root / "objects" / name, ignore_errors=True)
        return True
