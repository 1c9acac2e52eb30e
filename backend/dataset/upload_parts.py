"""Chunked uploads with remote (S3) storage: each chunk goes to the bucket as one part of a multipart upload as
it arrives, so the file is never whole on the API's disk (or memory: a chunk at most, spooled past 8 MiB).

S3 wants every part but the last to be at least 5 MiB, so a chunk that ends before the end of the file must carry
that much (the studio's own clients send 8 MiB chunks). The part number follows from the parts already stored:
the part after those that end exactly at the chunk's start, so a chunk sent again after a request that stored its
part but failed to record the offset replaces that part. The object appears only when `finish_parts` joins them.
"""

import io
import tempfile
from collections.abc import AsyncIterator
from typing import Any, BinaryIO, cast

from anyio import to_thread
from starlette.requests import ClientDisconnect

from backend.errors import Conflict, DomainError, Invalid
from backend.storage import get_storage, scratch_dir

MULTIPART = "_multipart"  # the S3 upload id, kept in the Upload row's options (never shown, never a read option)
PART_MIN = 5 * 1024 * 1024
SPOOL = 8 * 1024 * 1024


def object_key(upload_id: str) -> str:
    return f"uploads/{upload_id}"


def start_parts(upload_id: str) -> dict[str, str]:
    """Begin the multipart upload; what to add to the row's options."""
    return {MULTIPART: get_storage().start_multipart(object_key(upload_id))}


def multipart_id(options: dict[str, Any]) -> str:
    """The upload's S3 multipart id; Conflict for an upload started before storage moved to S3 (its bytes are in
    a part file on the old disk, out of reach)."""
    if MULTIPART not in options:
        raise Conflict("this upload was started before storage moved to S3; restart the upload")
    return str(options[MULTIPART])


def read_options(options: dict[str, Any]) -> dict[str, Any]:
    """The row's options without the multipart bookkeeping: how to read the file."""
    return {k: v for k, v in options.items() if k != MULTIPART}


def check_part(*, start: int, end: int, size: int) -> None:
    """Refuse, before reading its body, a chunk that would make a part S3 refuses at the end."""
    if end < size and end - start < PART_MIN:
        raise Invalid(
            f"with S3 storage every chunk but the last must carry at least {PART_MIN} bytes; this one has "
            f"{end - start}",
            field="Content-Range",
        )


def _next_number(upload_id: str, multipart: str, start: int) -> int:
    number, total = 0, 0
    for n, _etag, size in get_storage().list_parts(object_key(upload_id), multipart):
        if total == start:
            break
        number, total = n, total + size
    if total != start:
        raise Conflict(f"the stored parts end at {total}, not at the chunk's start {start}", received_bytes=total)
    return number + 1


async def copy_body(dest: BinaryIO, body: AsyncIterator[bytes], *, start: int, end: int) -> None:
    """Write the request body of the chunk [start, end) to `dest` at its position: exactly end-start bytes, else
    Invalid (or, for a dropped client, a DomainError telling it to resume from `start`)."""
    received = 0
    try:
        async for piece in body:
            received += len(piece)
            if received > end - start:
                raise Invalid(f"body is longer than the {end - start} bytes of its Content-Range", field="body")
            dest.write(piece)
    except ClientDisconnect:
        # Answered to nobody; raised as a domain error so the server logs no traceback for a dropped client.
        raise DomainError(f"connection dropped after {received} bytes of the chunk", received_bytes=start) from None
    if received != end - start:
        raise Invalid(f"body has {received} bytes; its Content-Range says {end - start}", field="body")


async def receive_part(
    options: dict[str, Any], upload_id: str, body: AsyncIterator[bytes], *, start: int, end: int
) -> None:
    """Store the chunk `body` (exactly end-start bytes, else nothing is stored) as the next part."""
    multipart = multipart_id(options)
    with tempfile.SpooledTemporaryFile(max_size=SPOOL, mode="w+b", dir=str(scratch_dir())) as spool:
        await copy_body(cast(BinaryIO, spool), body, start=start, end=end)
        spool.seek(0)
        number = await to_thread.run_sync(_next_number, upload_id, multipart, start)
        # The spool itself is the part's body: a 64 MiB chunk is never held whole in memory a second time.
        store = get_storage().put_part
        await to_thread.run_sync(store, object_key(upload_id), multipart, number, cast(BinaryIO, spool))


def finish_parts(options: dict[str, Any], upload_id: str, size: int) -> str:
    """Join the parts that make up the `size` received bytes into the object; its key."""
    storage, key, multipart = get_storage(), object_key(upload_id), multipart_id(options)
    if size == 0:  # S3 joins no empty list of parts: an empty file is one empty object
        storage.abort_multipart(key, multipart)
        storage.put_stream(key, io.BytesIO(b""))
        return key
    parts, total = [], 0
    for number, etag, part_size in storage.list_parts(key, multipart):
        if total >= size:
            break  # a part stored by a request whose offset was never recorded
        parts.append((number, etag))
        total += part_size
    if total != size:  # the row's offset and the stored parts disagree: joining them would store another file
        raise Conflict(f"the stored parts hold {total} bytes, not the {size} received; restart the upload")
    storage.complete_multipart(key, multipart, parts)
    return key


def abort_parts(options: dict[str, Any], upload_id: str) -> None:
    """Drop the unfinished multipart upload (a no-op once it was joined)."""
    if multipart := options.get(MULTIPART):
        get_storage().abort_multipart(object_key(upload_id), multipart)
