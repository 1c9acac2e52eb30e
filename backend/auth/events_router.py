from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel

from backend.auth.events import MAX_LIMIT, recent_events
from backend.deps import CurrentUser, SessionDep

router = APIRouter(prefix="/api/security", tags=["security"])


class SecurityEventRead(BaseModel):
    id: int
    created_at: datetime
    kind: str
    email: str | None
    client: str | None
    message: str


class SecurityEventList(BaseModel):
    items: list[SecurityEventRead]


@router.get("/events", response_model=SecurityEventList)
def list_events(
    session: SessionDep, user: CurrentUser, limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 100
) -> SecurityEventList:
    """Throttled logins, revoked tokens, disabled accounts: newest first (administrators only)."""
    events = recent_events(session, user=user, limit=limit)
    return SecurityEventList(items=[SecurityEventRead.model_validate(e, from_attributes=True) for e in events])
