"""Datasets: stream an upload to disk, validate it whole, keep it only when valid."""

import hashlib
import itertools
import json
import re
import uuid
from pathlib import Path
from typing import Any, BinaryIO

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from backend.config import get_settings
from backend.dataset.formats import (
    ACCEPTED,
    FormatError,
    LimitExceeded,
    Readable,
    Summary,
    UnsupportedFile,
    parse_options,
    read_records,
    summarize,
)
from backend.dataset.formats.plan import check_options_for
from backend.dataset.formats.values import display
from backend.db import Dataset, Job, Model, User
from backend.errors import Conflict, Invalid, NotFound, TooLarge, Unsupported
from backend.model.service import stored_chat_template
from backend.storage import get_storage, scratch_dir
from backend.storage.stored_file import StoredFile, readable

CHUNK = 1 << 20
PREVIEW_CHARS = 100_000
INSTRUCT_NAME = re.compile(r"instruct|chat|-it\b", re.IGNORECASE)


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
                raise TooLarge(f"file is over the upload limit of {limit} bytes (max_upload_bytes)", field="file")
            digest.update(chunk)
            out.write(chunk)
    return digest.hexdigest(), size


def _sha256(source: Path | str) -> str:
    """The sha256 of a local file, or of a stored object (`source` a key) streamed from storage."""
    digest = hashlib.sha256()
    with source.open("rb") if isinstance(source, Path) else get_storage().open(source) as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _temp_path() -> Path:
    return scratch_dir() / f"{uuid.uuid4().hex}.part"


def options_from_form(raw: str) -> dict[str, Any]:
    """The `options` form field: a JSON object (shape, layout, columns, text_split, quoting, delimiter)."""
    if not raw.strip():
        return {}
    try:
        value = json.loads(raw)
    except ValueError:
        raise Invalid("options must be a JSON object", field="options") from None
    if not isinstance(value, dict):
        raise Invalid("options must be a JSON object", field="options")
    return value


def check_upload(filename: str, options: dict[str, Any] | None) -> None:
    """Refuse, before any bytes are sent, a file type we do not read (415) or options that are wrong (422)."""
    name = safe_filename(filename)
    try:
        check_options_for(name, parse_options(options))
    except UnsupportedFile as exc:
        raise Unsupported(f"{name}: {exc.message}", field="filename", file=name, accepted=ACCEPTED) from None
    except FormatError as exc:
        raise Invalid(exc.message, field=exc.field or "options") from None


def _location(summary: Summary, error: dict[str, Any]) -> str:
    unit = "row" if summary.reader == "parquet" else "line"
    where = f"{unit} {error['line']}: " if error.get("line") is not None else ""
    what = f"field '{error['field']}': " if error.get("field") else ""
    return f"{where}{what}{error['message']}"


def _summarize(path: Path | Readable, filename: str, options: dict[str, Any] | None, max_records: int = 0) -> Summary:
    """`summarize`, with a file past a limit or of an unsupported type turned into its domain error."""
    try:
        return summarize(path, filename, options, max_records=max_records)
    except UnsupportedFile as exc:
        raise Unsupported(f"{filename}: {exc.message}", field="file", file=filename, accepted=ACCEPTED) from None
    except LimitExceeded as exc:
        raise TooLarge(f"{filename}: {exc}", field="file", file=filename, line=exc.line) from None


def validate_file(path: Path | Readable, filename: str, options: dict[str, Any] | None = None) -> Summary:
    """Validate every record of `path`; raise `Invalid` naming the first problems, or the limit/type error."""
    summary = _summarize(path, filename, options)
    if summary.error_count:
        first = summary.errors[0]
        more = summary.error_count - 1
        detail = f"{filename}: {_location(summary, first)}" + (f" (and {more} more errors)" if more else "")
        raise Invalid(
            detail,
            field="file",
            file=filename,
            line=first["line"],
            problem=first["message"],
            errors=summary.errors,
            error_count=summary.error_count,
        )
    return summary


def ingest_file(
    session: Session,
    *,
    user: User,
    path: Path,
    filename: str,
    name: str = "",
    options: dict[str, Any] | None = None,
    parent: Dataset | None = None,
    note: str = "",
) -> Dataset:
    """Validate the complete temp file `path` whole; when valid, store it and insert its row.

    `path` is best in `scratch_dir()` (with local storage, a rename); it is gone afterwards, kept or not."""
    return _ingest(
        session, user=user, path=path, filename=filename, name=name, options=options, parent=parent, note=note
    )


def ingest_stored(
    session: Session, *, user: User, key: str, filename: str, name: str = "", options: dict[str, Any] | None = None
) -> Dataset:
    """`ingest_file` for an object already in storage (a completed chunked upload): validated by streaming it
    from storage, then moved under its dataset key. `key` is gone afterwards, kept or not."""
    return _ingest(session, user=user, path=key, filename=filename, name=name, options=options, parent=None, note="")


def _ingest(
    session: Session,
    *,
    user: User,
    path: Path | str,
    filename: str,
    name: str,
    options: dict[str, Any] | None,
    parent: Dataset | None,
    note: str,
    sha256: str = "",
) -> Dataset:
    settings = get_settings()
    clean = safe_filename(filename)
    storage = get_storage()
    try:
        readable = path if isinstance(path, Path) else StoredFile(path)
        size = path.stat().st_size if isinstance(path, Path) else storage.size(path)
        if size > settings.max_upload_bytes:
            raise TooLarge(
                f"{clean}: over the upload limit of {settings.max_upload_bytes} bytes (max_upload_bytes)",
                field="file",
                file=clean,
            )
        summary = validate_file(readable, clean, options)
        sha256 = sha256 or _sha256(path)
        key = f"datasets/{user.id}/{sha256[:16]}-{clean}"
        shared = storage.exists(key)  # the same bytes under the same name, already kept for another dataset
        if isinstance(path, Path):
            storage.put_file(key, path, move=True)
        else:
            storage.move(path, key)
    finally:
        if isinstance(path, Path):
            path.unlink(missing_ok=True)
        else:
            storage.delete(path)  # refused, or already moved (then a no-op)
    dataset = Dataset(
        owner_id=user.id,
        name=(name or Path(clean).stem)[:200],
        filename=clean,
        path=key,
        size_bytes=size,
        sha256=sha256,
        format=summary.format,
        shape=summary.shape,
        record_count=summary.record_count,
        confidence=summary.confidence,
        warnings=summary.warnings,
        warning_count=summary.warning_count,
        columns=summary.columns,
        options=summary.options,
        parent_id=parent.id if parent else None,
        version=parent.version + 1 if parent else 1,
        note=note,
    )
    session.add(dataset)
    try:
        session.flush()
    except Exception:
        if not shared:
            storage.delete(key)
        raise
    return dataset


def create_dataset(
    session: Session,
    *,
    user: User,
    source: BinaryIO,
    filename: str,
    name: str = "",
    options: dict[str, Any] | None = None,
) -> Dataset:
    """Stream `source` to a temporary file, then `ingest_file` it (validated whole, kept only when valid)."""
    tmp = _temp_path()
    try:
        sha256, _ = _spool(source, tmp, get_settings().max_upload_bytes)
        return _ingest(
            session,
            user=user,
            path=tmp,
            filename=filename,
            name=name,
            options=options,
            parent=None,
            note="",
            sha256=sha256,
        )
    finally:
        tmp.unlink(missing_ok=True)


def inspect_file(*, path: Path, filename: str, options: dict[str, Any] | None = None, max_records: int = 0) -> Summary:
    """Detect and validate a file without keeping it: layout, shape, confidence, columns, first rows, problems."""
    return _summarize(path, safe_filename(filename), options, max_records)


def inspect_upload(
    *, source: BinaryIO, filename: str, options: dict[str, Any] | None = None, max_records: int = 0
) -> Summary:
    """`inspect_file` for an upload stream (spooled to a temporary file that is removed afterwards)."""
    tmp = _temp_path()
    try:
        _spool(source, tmp, get_settings().max_upload_bytes)
        return inspect_file(path=tmp, filename=filename, options=options, max_records=max_records)
    finally:
        tmp.unlink(missing_ok=True)


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


def preview(dataset: Dataset, rows: int = 20) -> list[dict[str, Any]]:
    """The first records as the trainer will read them (very long strings cut for display)."""
    records = read_records(readable(dataset.path), dataset.filename, dataset.options or None, head_only=True)
    return [display(r, PREVIEW_CHARS) for r in itertools.islice(records, rows)]


def chat_models(models: list[Model]) -> set[int]:
    """Ids of the ready models whose tokenizer carries a chat template (read from their files)."""
    return {m.id for m in models if m.status == "ready" and stored_chat_template(m.path)}


def dry_run_model(models: list[Model], *, shape: str, chat: set[int]) -> int | None:
    """The model the dataset page's statistics and dry run start with (`models` newest first).

    Every shape but raw text is trained through the model's chat template, so a chat model shows the tokens
    training will see; the newest model is often a tiny pretrain with no template. For chat data: the newest
    ready model with a template, else one named like an instruct model; otherwise the newest ready one."""
    ready = [m for m in models if m.status == "ready"] or models
    if shape != "text":
        chosen = next((m for m in ready if m.id in chat), None) or next(
            (m for m in ready if INSTRUCT_NAME.search(m.name)), None
        )
        if chosen is not None:
            return chosen.id
    return ready[0].id if ready else None


def delete_dataset(session: Session, *, user: User, dataset_id: int) -> None:
    """Remove a dataset no job refers to (jobs record the exact data they trained on)."""
    ds = get_dataset(session, user=user, dataset_id=dataset_id)
    used = select(Job.id).where(or_(Job.dataset_id == ds.id, Job.validation_dataset_id == ds.id)).limit(1)
    if session.scalar(used) is not None:
        raise Conflict(f"dataset {ds.id} is used by jobs (training or validation data); delete them first")
    session.delete(ds)
    session.flush()
    # Another upload of the same bytes by this user shares the file name; keep it if still referenced.
    if session.scalar(select(Dataset.id).where(Dataset.path == ds.path).limit(1)) is None:
        get_storage().delete(ds.path)
