from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, ForeignKey, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from backend.db.base import Base, UTCDateTime, utcnow
from backend.db.lease import Leased


class Export(Leased, Base):
    """A user's request to package a job's weights (its final output or one checkpoint) as a downloadable zip:
    the adapter as is, merged into the base, or the full model, in a chosen dtype. A worker claims the row,
    reports `progress` as it loads, merges, saves and zips, and registers the zip as one of the job's artifacts.
    """

    __tablename__ = "exports"

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    checkpoint: Mapped[str | None] = mapped_column(String(200))  # None: the job's final output
    format: Mapped[str] = mapped_column(String(16))  # "adapter" | "merged" | "model"
    dtype: Mapped[str] = mapped_column(String(16), default="float32")  # float32 | float16 | bfloat16
    status: Mapped[str] = mapped_column(String(16), default="queued")  # queued | running | done | failed
    # {"phase": "loading" | "merging" | "saving" | "zipping", "done": n, "total": n, "unit": "bytes" | "files"}
    progress: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    artifact_name: Mapped[str | None] = mapped_column(String(200))  # the zip, once registered as an artifact
    size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
