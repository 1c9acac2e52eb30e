"""Live streams answer to the credential that opened them for as long as they stay open, not just at connect: a
dashboard left open after its token was revoked, its session logged out or its account disabled stops receiving
at its next event (at most RECHECK_SECONDS of events after the change)."""

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


def _authorizes(secret: str) -> bool:
    with session_scope() as s:
        return user_for_token(s, secret) is not None


async def _while_authorized(secret: str | None, events: AsyncIterator[Any]) -> AsyncIterator[Any]:
    checked = time.monotonic()
    async for event in events:
        if secret is not None and time.monotonic() - checked >= RECHECK_SECONDS:
            try:
                allowed = await to_thread.run_sync(_authorizes, secret)
            except Exception as exc:
                if not transient(exc):
                    raise
                allowed = True  # a database blip must not cut every dashboard; the next event asks again
                log.warning("could not recheck a stream's credential (%s); asking at the next event", exc)
            else:
                checked = time.monotonic()
            if not allowed:
                return
        yield event


def live_events(request: Request, events: AsyncIterator[Any]) -> EventSourceResponse:
    """The SSE response for `events`, ended once the request's credential stops authorizing (see module doc)."""
    return EventSourceResponse(_while_authorized(credential(request), events), ping=PING_SECONDS)
