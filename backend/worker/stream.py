"""Server-sent events for the Workers page: a `workers` event (every worker with its `live` flag, the queue
depth, the server's clock) on connect and whenever that changes.

Workers publish `worker_key` on each heartbeat and job change, jobs publish their id when queued or started;
the stream listens to both. A worker that goes silent publishes nothing, so the stream also looks again every
`LIVE_CHECK_SECONDS`: `live` turns false by time, not by an event.
"""

import json
import math
from collections.abc import AsyncIterator
from typing import Any

from anyio import to_thread

from backend.db import session_scope
from backend.events import ANY_JOB, Broadcaster, any_key, pace
from backend.worker.service import Viewer, live_state

LIVE_CHECK_SECONDS = 2.0
MIN_READ_SECONDS = 1.0


def _read(viewer: Viewer) -> dict[str, Any]:
    with session_scope() as s:
        return live_state(s, viewer).model_dump(mode="json")


async def workers_events(broadcaster: Broadcaster, viewer: Viewer) -> AsyncIterator[dict[str, str]]:
    """Yield the workers' state, as `viewer` may see it, now and whenever it changes, while the client listens."""
    last: dict[str, Any] | None = None
    # Registered before the first read, so a report between a read and the wait is never lost.
    with broadcaster.listen(any_key("worker"), ANY_JOB) as wake:
        read_at = -math.inf
        while True:
            # Every job publishes at each logged step: a look (three queries) at most once a second.
            read_at = await pace(read_at, MIN_READ_SECONDS)
            state = await to_thread.run_sync(_read, viewer)
            # The clock moves on every read; only what a person sees decides whether to send.
            seen = {k: v for k, v in state.items() if k != "now"}
            if seen != last:
                last = seen
                yield {"event": "workers", "data": json.dumps(state)}
            await broadcaster.wait(wake, LIVE_CHECK_SECONDS)
