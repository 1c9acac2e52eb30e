"""/v1/files: each uploaded file is a studio dataset (validated the same way); a job's results CSV is a file too."""

from collections.abc import Iterator
from datetime import datetime
from typing import Any, BinaryIO

from sqlalchemy.orm import Session

from backend.dataset import service as datasets
from backend.db import Dataset, Job, User
from backend.errors import NotFound
from backend.job import service as jobs
from backend.openai_compat import ids
from backend.openai_compat.errors import ApiError
from backend.openai_compat.results import results_csv

# OpenAI's other purposes (assistants, batch, vision, ...) serve products the studio does not have.
PURPOSES = ("fine-tune",)
RESULTS_PURPOSE = "fine-tune-results"


def epoch(when: datetime | None) -> int | None:
    """OpenAI's times: whole seconds since the epoch (the studio stores UTC datetimes)."""
    return int(when.timestamp()) if when is not None else None


def file_view(ds: Dataset) -> dict[str, Any]:
    return {
        "object": "file",
        "id": ids.file_id(ds.id),
        "bytes": ds.size_bytes,
        "created_at": epoch(ds.created_at),
        "filename": ds.filename,
        "purpose": "fine-tune",
        "status": "processed",  # kept only once valid: there is no "uploaded but unchecked" state
        "status_details": None,
        "expires_at": None,
    }


def create_file(session: Session, *, user: User, source: BinaryIO, filename: str, purpose: str) -> Dataset:
    """Store an upload as a dataset, refused (400 naming `file`) when it does not read as training data."""
    if purpose not in PURPOSES:
        raise ApiError(
            f"purpose {purpose!r} is not supported here: the studio keeps files for fine-tuning ('fine-tune')",
            param="purpose",
        )
    return datasets.create_dataset(session, user=user, source=source, filename=filename)


def get_file(session: Session, *, user: User, file_id: str) -> Dataset:
    """The dataset behind `file_id` (404 in OpenAI's shape when there is none the user may see)."""
    ref = ids.parse_file(file_id, param="file_id")
    if ref.dataset_id is None:
        raise ApiError(f"No such File object: {file_id}", status=404, param="file_id")
    try:
        return datasets.get_dataset(session, user=user, dataset_id=ref.dataset_id)
    except NotFound:
        raise ApiError(f"No such File object: {file_id}", status=404, param="file_id") from None


def results_view(session: Session, *, user: User, file_id: str, job_id: int) -> dict[str, Any]:
    """The metadata of a job's results file (its content is computed from the logged points when read)."""
    job = _job_of(session, user=user, file_id=file_id, job_id=job_id)
    return {
        "object": "file",
        "id": file_id,
        "bytes": None,  # written from the points as it is read: its size is not known before
        "created_at": epoch(job.finished_at or job.created_at),
        "filename": "step_metrics.csv",
        "purpose": RESULTS_PURPOSE,
        "status": "processed",
        "status_details": None,
        "expires_at": None,
    }


def results_content(session: Session, *, user: User, file_id: str, job_id: int) -> Iterator[bytes]:
    """The results CSV's bytes as they are written (checked for access now, read while the response streams)."""
    return results_csv(_job_of(session, user=user, file_id=file_id, job_id=job_id).id)


def _job_of(session: Session, *, user: User, file_id: str, job_id: int) -> Job:
    try:
        return jobs.get_job(session, user=user, job_id=job_id)
    except NotFound:
        raise ApiError(f"No such File object: {file_id}", status=404, param="file_id") from None


def list_files(
    session: Session, *, user: User, purpose: str | None, after: str | None, limit: int, order: str
) -> dict[str, Any]:
    """The user's files, newest first (or oldest with order=asc), `limit` after the file id `after`."""
    if purpose is not None and purpose not in PURPOSES:
        return {"object": "list", "data": [], "first_id": None, "last_id": None, "has_more": False}
    rows = datasets.list_datasets(session, user=user)  # newest first
    if order == "asc":
        rows.reverse()
    if after is not None:
        cursor = ids.parse_file(after, param="after", status=400).dataset_id
        rows = [r for r in rows if (r.id < cursor if order != "asc" else r.id > cursor)] if cursor else rows
    page = rows[:limit]
    data = [file_view(r) for r in page]
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": len(rows) > limit,
    }


def delete_file(session: Session, *, user: User, file_id: str) -> dict[str, Any]:
    """Delete a file no job trains on (409 naming the jobs otherwise, as the studio does)."""
    ds = get_file(session, user=user, file_id=file_id)
    datasets.delete_dataset(session, user=user, dataset_id=ds.id)
    return {"object": "file", "id": file_id, "deleted": True}
