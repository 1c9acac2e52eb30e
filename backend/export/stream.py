"""Server-sent events for a job's exports: the whole list now and whenever any export changes, `end` once none
is queued or running. The first event is the snapshot, so a reload (or a reconnect) shows the same state."""

import json
from collections.abc import AsyncIterator
from typing import Any

from anyio import to_thread

from backend.db import session_scope
from backend.events import Broadcaster, any_key
from backend.export.schemas import ACTIVE
from backend.export.service import list_exports, to_read

SAFETY_POLL_SECONDS = 5.0  # a missed publish costs at most this long


def _snapshot(job_id: int) -> list[dict[str, Any]]:
    with session_scope() as s:
        return [to_read(row).model_dump(mode="json") for row in list_exports(s, job_id)]


async def export_list_events(job_id: int, broadcaster: Broadcaster) -> AsyncIterator[dict[str, str]]:
    """Yield `exports` ({"items": [...]}, newest first) on connect and on each change, then `end`."""
    last: list[dict[str, Any]] | None = None
    # Every export's key wakes this stream: a publish names an export, not its job, and the snapshot comparison
    # (a few rows) tells whether this job's list changed.
    with broadcaster.listen(any_key("export")) as wake:
        while True:
            items = await to_thread.run_sync(_snapshot, job_id)
            if items != last:
                last = items
                yield {"event": "exports", "data": json.dumps({"items": items})}
            if not any(item["status"] in ACTIVE for item in items):
                yield {"event": "end", "data": json.dumps({"active": 0})}
                return
            await broadcaster.wait(wake, SAFETY_POLL_SECONDS)
