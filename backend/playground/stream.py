"""Server-sent events for one generation: the stored answer after Last-Event-ID, then the rest as it arrives.

The output only grows, so an event id is the number of characters sent so far: a reconnect (or a reload)
resumes from there, or replays the whole answer from 0.
"""

import json
from collections.abc import AsyncIterator
from typing import Any

from anyio import to_thread

from backend.db import Generation, session_scope
from backend.events import Broadcaster, generation_key
from backend.schemas import MAX_ID

FINAL = ("done", "failed")
# How long to wait for a Redis wake-up before looking at the database anyway.
SAFETY_POLL_SECONDS = 5.0


def parse_offset(value: str | None) -> int:
    try:
        return min(MAX_ID, max(0, int(value or 0)))
    except ValueError:
        return 0


def _read(generation_id: int) -> tuple[str, str | None, str]:
    with session_scope() as s:
        row = s.get(Generation, generation_id)
        assert row is not None  # checked by the route; rows go only with their owner
        return row.status, row.error, row.output


def _event(name: str, offset: int, data: dict[str, Any]) -> dict[str, str]:
    return {"event": name, "id": str(offset), "data": json.dumps(data)}


async def generation_events(generation_id: int, offset: int, broadcaster: Broadcaster) -> AsyncIterator[dict[str, str]]:
    """Yield SSE dicts: `status` on each change, `token` with each new piece of text, then `end`."""
    with broadcaster.listen(generation_key(generation_id)) as wake:
        last_status = None
        while True:
            status, error, output = await to_thread.run_sync(_read, generation_id)
            if status != last_status:
                last_status = status
                yield _event("status", offset, {"status": status})
            if len(output) > offset:
                text, offset = output[offset:], len(output)
                yield _event("token", offset, {"text": text})
            if status in FINAL:  # the row is read whole: a final status comes with the complete output
                yield _event("end", offset, {"status": status, "error": error})
                return
            await broadcaster.wait(wake, SAFETY_POLL_SECONDS)
