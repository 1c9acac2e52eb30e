"""Objects as files under one folder (the data directory): the embedded default, and a shared POSIX mount.

Every write lands in a hidden sibling first and is renamed into place, so a reader never sees half an object.
An absolute "key" is a row written before keys existed that points outside the data directory (a model
directory registered from the command line, which stays where it is): it is read where it is.
"""

import builtins
import hashlib
import io
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from backend.storage.base import check_key, files_under

CHUNK = 1 << 20
MULTIPART = ".multipart"  # parts of unfinished multipart uploads, one folder per upload


class LocalStorage:
    def __init__(self, root: Path) -> None:
        self.root = root

    def __repr__(self) -> str:
        return f"LocalStorage({self.root})"

    def path(self, key: str) -> Path:
        if key.startswith("/"):
            return Path(key)
        return self.root / check_key(key)

    def _aside(self, dest: Path) -> Path:
        dest.parent.mkdir(parents=True, exist_ok=True)
        return dest.with_name(f".tmp-{uuid.uuid4().hex[:12]}-{dest.name}")

    def put_file(self, key: str, source: Path, *, move: bool = False) -> None:
        dest = self.path(key)
        if dest.exists() and dest.samefile(source):
            return  # a worker wrote it in place (local storage is where it works)
        tmp = self._aside(dest)
        try:
            # A rename when `source` is on the same file system (uploads are spooled under the data directory).
            shutil.move(source, tmp) if move else shutil.copyfile(source, tmp)
            tmp.replace(dest)
        finally:
            tmp.unlink(missing_ok=True)

    def put_stream(self, key: str, stream: BinaryIO) -> int:
        dest = self.path(key)
        tmp = self._aside(dest)
        try:
            with tmp.open("wb") as out:
                shutil.copyfileobj(stream, out, CHUNK)
                size = out.tell()
            tmp.replace(dest)
        finally:
            tmp.unlink(missing_ok=True)
        return size

    def put_tree(self, prefix: str, source: Path, *, move: bool = False, last: tuple[str, ...] = ()) -> None:
        dest = self.path(prefix)
        if dest.resolve() == source.resolve():
            return  # already in place (a worker wrote straight into the data directory)
        tmp = self._aside(dest)
        try:
            shutil.move(source, tmp) if move else shutil.copytree(source, tmp)
            shutil.rmtree(dest, ignore_errors=True)
            tmp.replace(dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    @contextmanager
    def open(self, key: str) -> Iterator[BinaryIO]:
        with self.path(key).open("rb") as f:
            yield f

    def fetch(self, key: str, target: Path) -> None:
        tmp = self._aside(target)
        try:
            shutil.copyfile(self.path(key), tmp)
            tmp.replace(target)
        finally:
            tmp.unlink(missing_ok=True)

    def fetch_tree(self, prefix: str, target: Path) -> int:
        source = self.path(prefix)
        if not source.is_dir():
            raise FileNotFoundError(f"nothing stored under {prefix}")
        shutil.copytree(source, target, dirs_exist_ok=True)
        return sum(1 for _ in files_under(source))

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def size(self, key: str) -> int:
        return self.path(key).stat().st_size

    def version(self, key: str, *, tree: bool = False) -> str:
        if not tree:
            info = self.path(key).stat()
            return f"{info.st_size}@{info.st_mtime_ns}"
        found = self.scan(key)
        if not found:
            raise FileNotFoundError(f"nothing stored under {key}")
        listed = [f"{k} {size} {self.path(k).stat().st_mtime_ns}" for k, (size, _) in sorted(found.items())]
        return hashlib.sha256("\n".join(listed).encode()).hexdigest()

    def list(self, prefix: str) -> builtins.list[str]:
        folder = self.path(prefix)
        if not folder.is_dir():
            return []
        # Hidden entries are writes in progress (".tmp-...") or multipart parts: not objects yet.
        return [
            f"{prefix}/{rel}"
            for rel, _ in files_under(folder)
            if not any(part.startswith(".tmp-") or part == MULTIPART for part in rel.split("/"))
        ]

    def scan(self, prefix: str) -> dict[str, tuple[int, float]]:
        found = {}
        for key in self.list(prefix):
            info = self.path(key).stat()
            found[key] = (info.st_size, info.st_mtime)
        return found

    def move(self, source: str, dest: str) -> None:
        target = self.path(dest)
        target.parent.mkdir(parents=True, exist_ok=True)
        self.path(source).replace(target)

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)

    def delete_prefix(self, prefix: str) -> None:
        shutil.rmtree(self.path(prefix), ignore_errors=True)

    def presigned_url(self, key: str, *, filename: str, expires_seconds: int = 3600) -> str | None:
        return None

    def local_path(self, key: str) -> Path | None:
        return self.path(key)

    def _parts(self, upload_id: str) -> Path:
        check_key(upload_id)
        return self.root / MULTIPART / upload_id

    def start_multipart(self, key: str) -> str:
        upload_id = uuid.uuid4().hex
        self._parts(upload_id).mkdir(parents=True)
        return upload_id

    def put_part(self, key: str, upload_id: str, number: int, data: bytes | BinaryIO) -> str:
        part = self._parts(upload_id) / f"{number:05d}"
        tmp = self._aside(part)
        digest = hashlib.md5(usedforsecurity=False)  # what S3 answers as the ETag
        stream = io.BytesIO(data) if isinstance(data, bytes) else data
        with tmp.open("wb") as out:
            while chunk := stream.read(CHUNK):
                digest.update(chunk)
                out.write(chunk)
        tmp.replace(part)
        return digest.hexdigest()

    def complete_multipart(self, key: str, upload_id: str, parts: builtins.list[tuple[int, str]]) -> None:
        folder = self._parts(upload_id)
        dest = self.path(key)
        tmp = self._aside(dest)
        try:
            with tmp.open("wb") as out:
                for number, _etag in sorted(parts):
                    with (folder / f"{number:05d}").open("rb") as part:
                        shutil.copyfileobj(part, out, CHUNK)
            tmp.replace(dest)
        finally:
            tmp.unlink(missing_ok=True)
        shutil.rmtree(folder, ignore_errors=True)

    def list_parts(self, key: str, upload_id: str) -> builtins.list[tuple[int, str, int]]:
        parts = []
        for part in sorted(self._parts(upload_id).iterdir()):
            if part.name.isdigit():
                data = part.read_bytes()
                parts.append((int(part.name), hashlib.md5(data, usedforsecurity=False).hexdigest(), len(data)))
        return parts

    def abort_multipart(self, key: str, upload_id: str) -> None:
        shutil.rmtree(self._parts(upload_id), ignore_errors=True)
