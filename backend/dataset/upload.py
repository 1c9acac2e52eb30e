"""Resumable chunked uploads: bytes are appended to a part file chunk by chunk, then validated whole.

A chunk must start exactly where the last accepted one ended, so a client that lost its connection asks for
the resume point (`received_bytes`) and goes on from there. A chunk that does not arrive whole is dropped.
"""

import fcntl
import re
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager, suppress
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO

from anyio import to_thread
from sqlalchemy import delete, inspect, select, update
from sqlalchemy.orm import Session

from backend.config import get_settings
from backend.dataset import service as datasets
from backend.dataset import upload_parts as parts
from backend.db import Dataset, Upload, User, utcnow
from backend.errors import Conflict, Invalid, NotFound, TooLarge
from backend.storage import get_storage, is_local, scratch_dir

CHUNK_SIZE = 8 * 1024 * 1024  # what clients are told to send
MAX_CHUNK = 64 * 1024 * 1024  # what one request may carry
STALE_AFTER = timedelta(days=1)
_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+)$")


def part_path(upload_id: str) -> Path:
    """Where the bytes received so far live (ids are hex: never a path). With remote storage the bytes go to the
    bucket as parts (`upload_parts`) and this empty file is only the upload's lock, in the cache folder."""
    if is_local():
        return get_settings().path("uploads") / f"{upload_id}.part"
    folder = get_settings().cache_path / "uploads"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{upload_id}.part"


def begin(upload: Upload) -> None:
    """Make the place the upload's bytes go: the part file (with remote storage, the lock and a multipart upload)."""
    part_path(upload.id).touch()
    if not is_local():
        upload.options = {**(upload.options or {}), **parts.start_parts(upload.id)}


def create_upload(
    session: Session, *, user: User, filename: str, size: int, name: str = "", options: dict[str, Any] | None = None
) -> Upload:
    """Start an upload of `size` bytes: an empty part file and its row; uploads idle for a day are removed."""
    limit = get_settings().max_upload_bytes
    if size > limit:
        raise TooLarge(f"file is over the upload limit of {limit} bytes", field="size", limit=limit)
    datasets.check_upload(filename, options)
    remove_stale_uploads(session)
    upload = Upload(
        id=uuid.uuid4().hex,
        owner_id=user.id,
        filename=datasets.safe_filename(filename),
        name=name,
        size_bytes=size,
        received_bytes=0,
        options=options or {},
    )
    begin(upload)
    session.add(upload)
    session.flush()
    return upload


def remove_stale_uploads(session: Session) -> int:
    """Forget uploads nobody has sent a chunk to for a day, with their part files."""
    cutoff = utcnow() - STALE_AFTER
    stale = list(session.scalars(select(Upload.id).where(Upload.updated_at < cutoff)))
    for upload_id in stale:
        discard_upload(session, upload_id)
    return len(stale)


def get_upload(session: Session, *, user: User, upload_id: str) -> Upload:
    """The upload, if `user` started it (not even admins write into someone else's upload)."""
    upload = session.get(Upload, upload_id)
    if upload is None or upload.owner_id != user.id:
        raise NotFound(f"upload {upload_id} not found")
    return upload


def delete_upload(session: Session, *, user: User, upload_id: str) -> None:
    """Abandon an upload and its bytes."""
    discard_upload(session, get_upload(session, user=user, upload_id=upload_id).id)


def discard_upload(session: Session, upload_id: str, *, keep_object: bool = False) -> bool:
    """Delete the row (by statement: a concurrent request may have deleted it first) and the part file; with
    remote storage its multipart upload, and the object its parts were joined into (a `complete` whose commit
    failed left it), unless `keep_object` (the `complete` that joined it goes on to read it).

    A chunk still arriving keeps writing to the unlinked file and then finds no row to advance."""
    part_path(upload_id).unlink(missing_ok=True)
    options = session.scalar(select(Upload.options).where(Upload.id == upload_id))
    if not is_local() and options is not None:  # no row: another request discarded it (and owns the object)
        parts.abort_parts(options, upload_id)
        if not keep_object:
            get_storage().delete(parts.object_key(upload_id))
    gone = session.execute(delete(Upload).where(Upload.id == upload_id).execution_options(synchronize_session=False))
    return bool(gone.rowcount)  # type: ignore[attr-defined]


def parse_content_range(header: str, *, size: int) -> tuple[int, int]:
    """`bytes start-end/total` → (start, end exclusive), checked against the upload's size."""
    m = _RANGE.match(header.strip())
    if not m:
        raise Invalid("Content-Range must look like 'bytes START-END/TOTAL'", field="Content-Range")
    start, last, total = (int(g) for g in m.groups())
    if total != size:
        raise Invalid(f"Content-Range total {total} is not the upload's size {size}", field="Content-Range")
    if not start <= last < total:
        raise Invalid(f"Content-Range {start}-{last} is outside 0-{total - 1}", field="Content-Range")
    if last + 1 - start > MAX_CHUNK:
        raise TooLarge(f"a chunk may carry at most {MAX_CHUNK} bytes", field="Content-Range", limit=MAX_CHUNK)
    return start, last + 1


async def write_chunk(
    session: Session, *, user: User, upload_id: str, content_range: str, body: AsyncIterator[bytes]
) -> dict[str, Any]:
    """Append one chunk streamed from `body`; it must start at `received_bytes` (else Conflict with the offset).

    Returns the upload's values as plain data: the offset is only ever written by the conditional update, so
    no ORM object is left for the request's final commit to write back over a newer (or deleted) row."""
    upload = await to_thread.run_sync(lambda: _detached_values(session, user=user, upload_id=upload_id))
    start, end = parse_content_range(content_range, size=upload["size_bytes"])
    remote = not is_local()
    if remote:
        parts.check_part(start=start, end=end, size=upload["size_bytes"])
    with locked_part(upload_id) as part:
        # Under the lock, read the offset afresh: another request may have just added a chunk.
        received = await to_thread.run_sync(received_bytes, session, upload_id)
        if received is None:
            raise NotFound(f"upload {upload_id} not found")
        if start != received:
            raise Conflict(
                f"chunk starts at {start} but the upload has {received} bytes; resume from there",
                received_bytes=received,
            )
        if remote:
            await parts.receive_part(upload["options"], upload_id, body, start=start, end=end)
        else:
            await _receive(part, body, start=start, end=end)
        # Committed while still holding the lock, so the next chunk never reads a stale offset.
        now = utcnow()
        if not await to_thread.run_sync(_advance, session, upload_id, start, end, now):
            raise Conflict(f"upload {upload_id} was removed while the chunk arrived")
    return {**upload, "received_bytes": end, "updated_at": now}


def _detached_values(session: Session, *, user: User, upload_id: str) -> dict[str, Any]:
    """The upload's columns as a dict, the row itself taken out of the session (nothing to flush later)."""
    upload = get_upload(session, user=user, upload_id=upload_id)
    values = {attr.key: getattr(upload, attr.key) for attr in inspect(Upload).column_attrs}
    session.expunge(upload)
    return values


def received_bytes(session: Session, upload_id: str) -> int | None:
    return session.scalar(select(Upload.received_bytes).where(Upload.id == upload_id))


def _advance(session: Session, upload_id: str, start: int, end: int, now: datetime) -> bool:
    """Move the offset from `start` to `end` and commit; False when the upload is gone."""
    moved = session.execute(
        update(Upload)
        .where(Upload.id == upload_id, Upload.received_bytes == start)
        .values(received_bytes=end, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    session.commit()
    return bool(moved.rowcount)  # type: ignore[attr-defined]


@contextmanager
def locked_part(upload_id: str) -> Iterator[BinaryIO]:
    """The part file opened for writing under an exclusive lock; a concurrent writer gets a Conflict."""
    try:
        part = part_path(upload_id).open("r+b", buffering=1 << 20)
    except FileNotFoundError:
        raise Conflict(f"upload {upload_id} is being completed or was removed") from None
    with part:  # closing releases the lock
        try:
            # flock works across API processes on one host; an NFS data_dir needs lockd.
            fcntl.flock(part.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise Conflict("another chunk of this upload is being received; retry when it ends") from None
        yield part


async def _receive(part: BinaryIO, body: AsyncIterator[bytes], *, start: int, end: int) -> None:
    """Stream the request body to the part file at `start`; anything short of exactly end-start bytes is undone."""
    part.seek(start)
    part.truncate()  # bytes of an earlier chunk that never arrived whole
    try:
        await parts.copy_body(part, body, start=start, end=end)
        part.flush()
    except BaseException:
        _undo(part, start)
        raise


def _undo(part: BinaryIO, start: int) -> None:
    """Leave the part file as it was before a chunk that did not arrive whole."""
    with suppress(OSError):
        part.seek(start)
        part.truncate()


def take_received(session: Session, upload: Upload) -> Path | str:
    """End the upload and hand over its bytes: the part file moved to a scratch file (local storage), or the
    stored object's key (remote storage: the parts joined). The caller owns it and must remove it."""
    remote = not is_local()
    tmp = scratch_dir() / f"{upload.id}.part"
    with locked_part(upload.id):  # no chunk is being written, and a second `complete` finds no part file
        received = received_bytes(session, upload.id)
        if received != upload.size_bytes:
            raise Conflict(
                f"upload has {received} of {upload.size_bytes} bytes; send the rest first", received_bytes=received
            )
        if remote:
            taken: Path | str = parts.finish_parts(upload.options or {}, upload.id, upload.size_bytes)
            part_path(upload.id).unlink()
        else:
            taken = tmp
            shutil.move(part_path(upload.id), tmp)
    # Committed now, so a file refused later still ends the upload (the error rolls the session back).
    removed = discard_upload(session, upload.id, keep_object=True)
    session.commit()
    if not removed:  # deleted while we took the file
        _remove(taken)
        raise NotFound(f"upload {upload.id} not found")
    return taken


def _remove(taken: Path | str) -> None:
    if isinstance(taken, Path):
        taken.unlink(missing_ok=True)
    else:
        get_storage().delete(taken)


def complete_upload(session: Session, *, user: User, upload_id: str) -> Dataset:
    """Validate the received file and store it as a dataset; the upload is consumed whether it is valid or not."""
    upload = get_upload(session, user=user, upload_id=upload_id)
    filename, name, options = upload.filename, upload.name, parts.read_options(dict(upload.options or {}))
    taken = take_received(session, upload)
    try:
        if isinstance(taken, Path):
            return datasets.ingest_file(session, user=user, path=taken, filename=filename, name=name, options=options)
        return datasets.ingest_stored(session, user=user, key=taken, filename=filename, name=name, options=options)
    finally:
        _remove(taken)
