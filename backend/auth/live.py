"""Live streams answer to the credential that opened them for as long as they stay open, not just at connect: a
dashboard left open after its token was revoked, its session logged out, its account disabled or its
administrator rights taken away stops receiving at its next event (at most RECHECK_SECONDS of events after the
change)."""

import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from anyio import to_thread
from fastapi import Request
from sse_starlette import EventSourceResponse

from backend.auth.service import user_for_token
from backend.db import session_scope
from backend.deps import credential
from backend.work.retry import transient

log = logging.getLogger(__name__)
RECHECK_SECONDS = 2.0
PING_SECONDS = 15


def _who(secret: str | None) -> tuple[int, bool] | None:
    """The user a credential authorizes now, and whether as an administrator (what a stream's contents hang on)."""
    if secret is None:
        return None
    with session_scope() as s:
        user = user_for_token(s, secret)
        return None if user is None else (user.id, user.is_admin)


async def _while_authorized(secret: str | None, events: AsyncIterator[Any]) -> AsyncIterator[Any]:
    opened = await to_thread.run_sync(_who, secret)
    checked = time.monotonic()
    try:
        async for event in events:
            if opened is not None and time.monotonic() - checked >= RECHECK_SECONDS:
                try:
                    now = await to_thread.run_sync(_who, secret)
                except Exception as exc:
                    if not transient(exc):
                        raise
                    now = opened  # a database blip must not cut every dashboard; the next event asks again
                    log.warning("could not recheck a stream's credential (%s); asking at the next event", exc)
                else:
                    checked = time.monotonic()
                # Revoked, logged out, disabled, or no longer an administrator (an admin's stream shows everyone's
                # jobs and workers): the stream ends, and this event is not sent.
                if now != opened:
                    return
            yield event
    finally:
        # Its listeners and cursors go when the stream ends here, not at a later garbage collection.
        aclose = getattr(events, "aclose", None)
        if aclose is not None:
            await aclose()


def live_events(request: Request, events: AsyncIterator[Any]) -> EventSourceResponse:
    """The SSE response for `events`, ended once the request's credential stops authorizing (see module doc)."""
    return EventSourceResponse(_while_authorized(credential(request), events), ping=PING_SECONDS)
