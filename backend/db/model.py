from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, ForeignKey, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from backend.db.base import Base, UTCDateTime, utcnow
from backend.db.lease import Leased


class Model(Leased, Base):
    """A base model a fine-tuning job can start from: a local HF directory or a pretrain job's output."""

    __tablename__ = "models"

    id: Mapped[int] = mapped_column(primary_key=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    source: Mapped[str] = mapped_column(String(16))  # "local" | "job" | "upload" | "gguf" | "hub"
    revision: Mapped[str | None] = mapped_column(String(200))  # hub models: the pinned revision
    path: Mapped[str] = mapped_column(String(1024))
    architecture: Mapped[str] = mapped_column(String(64), default="")
    parameters: Mapped[int] = mapped_column(BigInteger, default=0)
    # Shared models (added by an admin from the CLI) are visible to every user.
    shared: Mapped[bool] = mapped_column(default=False)
    # The job that produced it; no foreign key, because jobs already reference models (no cycle).
    job_id: Mapped[int | None]
    # Uploads and hub imports are converted by a worker: "importing" until the weights are ready to train.
    status: Mapped[str] = mapped_column(String(16), default="ready")  # "importing" | "ready" | "failed"
    error: Mapped[str | None] = mapped_column(Text)
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
