from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, ForeignKey, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from backend.db.base import Base, UTCDateTime, utcnow
from backend.db.lease import Leased


class Dataset(Base):
    __tablename__ = "datasets"

    id: Mapped[int] = mapped_column(primary_key=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    filename: Mapped[str] = mapped_column(String(255))
    path: Mapped[str] = mapped_column(String(1024))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    format: Mapped[str] = mapped_column(String(32))  # file layout: text, jsonl_text, alpaca, sharegpt, ...
    shape: Mapped[str] = mapped_column(String(32))  # canonical shape: text, prompt_completion, messages, ...
    record_count: Mapped[int]
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # How the file was read (shape/layout overrides, column mapping, text split): re-reading needs the same.
    options: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    confidence: Mapped[float] = mapped_column(default=1.0)
    warnings: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)  # the first ones
    warning_count: Mapped[int] = mapped_column(default=0)
    columns: Mapped[list[str]] = mapped_column(JSON, default=list)  # source fields seen, for column mapping
    # Versions: an edit or "apply fixes" makes a new immutable dataset whose parent is the one it came from.
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("datasets.id", ondelete="SET NULL"))
    version: Mapped[int] = mapped_column(default=1)
    note: Mapped[str] = mapped_column(Text, default="")


class Upload(Base):
    """A resumable chunked upload in progress: bytes are appended to a part file until `complete`."""

    __tablename__ = "uploads"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    filename: Mapped[str] = mapped_column(String(255))
    name: Mapped[str] = mapped_column(String(200), default="")
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    received_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    options: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class DatasetAnalysis(Leased, Base):
    """A worker-computed view of a dataset (token statistics, a dry-run render, hygiene), cached per
    dataset version and parameters (`key` is a hash of `params`)."""

    __tablename__ = "dataset_analyses"
    __table_args__ = (UniqueConstraint("dataset_id", "kind", "key"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # "stats" | "render" | "hygiene"
    key: Mapped[str] = mapped_column(String(64))
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    status: Mapped[str] = mapped_column(String(16), default="queued")  # queued | running | done | failed
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # While running: {"phase": "tokenizing" | ..., "done": records so far, "total": records}
    progress: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
