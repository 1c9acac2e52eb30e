from datetime import datetime

from sqlalchemy import String, Text
from sqlalchemy.orm import Mapped, mapped_column

from backend.db.base import Base, UTCDateTime, utcnow


class LoginThrottle(Base):
    """Failed logins counted per key ("email:<address>" or "client:<ip>"): after a few, the key waits an
    exponentially growing time before the next attempt is even checked. In the database, so every API process
    (and a restart) sees the same count."""

    __tablename__ = "login_throttles"

    key: Mapped[str] = mapped_column(String(400), primary_key=True)
    failures: Mapped[int] = mapped_column(default=0)
    last_failed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    blocked_until: Mapped[datetime | None] = mapped_column(UTCDateTime)


class SecurityEvent(Base):
    """What an administrator should see: throttled logins, revoked tokens, disabled accounts."""

    __tablename__ = "security_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    kind: Mapped[str] = mapped_column(String(32))  # "login_throttled" | "token_revoked" | "user_disabled" | ...
    email: Mapped[str | None] = mapped_column(String(320))
    client: Mapped[str | None] = mapped_column(String(200))
    message: Mapped[str] = mapped_column(Text)
