"""Datasets: stream an upload to disk, validate it whole, keep it only when valid."""

import hashlib
import itertools
import re
import uuid
from pathlib import Path
from typing import BinaryIO

from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.config import get_settings
from backend.dataset.formats import FormatError, read_records, summarize
from backend.db import Dataset, Job, User
from backend.errors import Conflict, Invalid, NotFound, TooLarge

CHUNK = 1 << 20


def safe_filename(name: str) -> str:
    """A file name we can store: no directories, no odd characters, never empty."""
    base = Path(name.replace("\\", "/")).name
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", base).strip("._") or "upload"
    return base[-120:]


def _spool(source: BinaryIO, dest: Path, limit: int) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    with dest.open("wb") as out:
        while chunk := source.read(CHUNK):
            size += len(chunk)
            if size > limit:
                raise TooLarge(f"file is over the upload limit of {limit} bytes", field="file")
            digest.update(chunk)
            out.write(chunk)
    return digest.hexdigest(), size


def create_dataset(session: Session, *, user: User, source: BinaryIO, filename: str, name: str = "") -> Dataset:
    """Stream `source` to a temporary file, validate every record, then move it into place atomically."""
    settings = get_settings()
    clean = safe_filename(filename)
    tmp = settings.path("tmp") / f"{uuid.uuid4().hex}.part"
    try:
        sha256, size = _spool(source, tmp, settings.max_upload_bytes)
        try:
            summary = summarize(tmp, clean)
        except FormatError as exc:
            raise Invalid(f"{clean}: {exc}", field="file", file=clean, line=exc.line, problem=exc.message) from None
        final = settings.path("datasets", str(user.id)) / f"{sha256[:16]}-{clean}"
        tmp.replace(final)
    finally:
        tmp.unlink(missing_ok=True)
    dataset = Dataset(
        owner_id=user.id,
        name=(name or Path(clean).stem)[:200],
        filename=clean,
        path=str(final),
        size_bytes=size,
        sha256=sha256,
        format=summary.format,
        shape=summary.shape,
        record_count=summary.record_count,
    )
    session.add(dataset)
    session.flush()
    return dataset


def get_dataset(session: Session, *, user: User, dataset_id: int) -> Dataset:
    ds = session.get(Dataset, dataset_id)
    if ds is None or not (ds.owner_id == user.id or user.is_admin):
        raise NotFound(f"dataset {dataset_id} not found")
    return ds


def list_datasets(session: Session, *, user: User) -> list[Dataset]:
    q = select(Dataset).order_by(Dataset.id.desc())
    if not user.is_admin:
        q = q.where(Dataset.owner_id == user.id)
    return list(session.scalars(q))


def preview(dataset: Dataset, rows: int = 20) -> list[dict[str, str]]:
    """The first records as the trainer will read them."""
    return list(itertools.islice(read_records(Path(dataset.path), dataset.filename), rows))


def delete_dataset(session: Session, *, user: User, dataset_id: int) -> None:
    """Remove a dataset no job refers to (jobs record the exact data they trained on)."""
    ds = get_dataset(session, user=user, dataset_id=dataset_id)
    if session.scalar(select(Job.id).where(Job.dataset_id == ds.id).limit(1)) is not None:
        raise Conflict(f"dataset {ds.id} is used by jobs; delete them first")
    path = Path(ds.path)
    session.delete(ds)
    session.flush()
    # Another upload of the same bytes by this user shares the file name; keep it if still referenced.
    if session.scalar(select(Dataset.id).where(Dataset.path == ds.path).limit(1)) is None:
        path.unlink(missing_ok=True)
