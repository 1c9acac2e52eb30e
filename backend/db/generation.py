from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from backend.db.base import Base, UTCDateTime, utcnow
from backend.db.lease import Leased


class Generation(Leased, Base):
    """One playground answer: a prompt run by a worker on a base model, or on a job's adapter or checkpoint.

    The worker appends to `output` as tokens arrive, so the page streams it and a reload shows it all."""

    __tablename__ = "generations"

    id: Mapped[int] = mapped_column(primary_key=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    # What answers: a base model alone, or a job's output (its adapter/model, or one of its checkpoints).
    model_id: Mapped[int | None] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    checkpoint: Mapped[str | None] = mapped_column(String(200))
    prompt: Mapped[str] = mapped_column(Text)
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # max_new_tokens, temperature, chat, ...
    status: Mapped[str] = mapped_column(String(16), default="queued")  # queued | running | done | failed
    output: Mapped[str] = mapped_column(Text, default="")
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
