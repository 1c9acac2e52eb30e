from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, String
from sqlalchemy.orm import Mapped, mapped_column

from backend.db.base import Base, UTCDateTime, utcnow


class Worker(Base):
    """A training or analysis worker process as it last reported itself (device, memory, current job)."""

    __tablename__ = "workers"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    hostname: Mapped[str] = mapped_column(String(200), default="")
    queue: Mapped[str] = mapped_column(String(64), default="")
    device: Mapped[str] = mapped_column(String(200), default="cpu")
    cuda: Mapped[bool] = mapped_column(default=False)
    bf16: Mapped[bool] = mapped_column(default=False)
    device_memory_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # Free bytes on the data folder's disk (refreshed with each heartbeat) and the first GPU's CUDA compute
    # capability ("8.0"), None on a CPU worker.
    disk_free_bytes: Mapped[int | None] = mapped_column(BigInteger)
    compute_capability: Mapped[str | None] = mapped_column(String(16))
    current_job_id: Mapped[int | None]
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
