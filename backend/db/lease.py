from datetime import datetime

from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column

from backend.db.base import UTCDateTime, utcnow


class Leased:
    """The columns every kind of background work shares (jobs, exports, generations, analyses, imports): who holds
    the row, since when it beats, which attempt it is on. `backend.work.lease` is the only code that writes them."""

    # The fencing token: each claim takes the next number, and a worker's writes are conditional on its own.
    attempt: Mapped[int] = mapped_column(default=0, server_default="0")
    # The attempt a person last (re)queued it at: automatic retries are counted from here (STUDIO_MAX_ATTEMPTS).
    attempt_base: Mapped[int] = mapped_column(default=0, server_default="0")
    # The worker holding the lease; None while queued or once finished.
    lease_worker: Mapped[str | None] = mapped_column(String(200))
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # When its task was last sent to the broker: queued work nobody claimed since is sent again (the broker may
    # have lost the message).
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=utcnow)
