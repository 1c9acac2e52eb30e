"""Security events: what an administrator should know happened (throttled logins, revoked tokens, disabled
accounts), kept as rows and listed newest first."""

from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.db import SecurityEvent, User
from backend.errors import Forbidden

MAX_LIMIT = 500


def record_event(
    session: Session, *, kind: str, message: str, email: str | None = None, client: str | None = None
) -> SecurityEvent:
    """A new event, written with the caller's transaction."""
    event = SecurityEvent(kind=kind, message=message, email=email, client=client)
    session.add(event)
    session.flush()
    return event


def recent_events(session: Session, *, user: User, limit: int = 100) -> list[SecurityEvent]:
    """The latest `limit` events, newest first; administrators only."""
    if not user.is_admin:
        raise Forbidden("security events are for administrators")
    query = select(SecurityEvent).order_by(SecurityEvent.created_at.desc(), SecurityEvent.id.desc())
    return list(session.scalars(query.limit(limit)))
