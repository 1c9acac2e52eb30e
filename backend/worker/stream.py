"""Server-sent events for the Workers page: a `workers` event (every worker with its `live` flag, the queue
depth, the server's clock) on connect and whenever that changes.

Workers publish `worker_key` on each heartbeat and job change, jobs publish their id when queued or started;
the stream listens to both. A worker that goes silent publishes nothing, so the stream also looks again every
`LIVE_CHECK_SECONDS`: `live` turns false by time, not by an event.
"""

import asyncio
import contextlib
import json
import math
import time
from collections.abc import AsyncIterator
from typing import Any

from anyio import to_thread

from backend.config import get_settings
from backend.db import session_scope
from backend.events import ANY_JOB, Broadcaster, any_key
from backend.worker.service import live_state

LIVE_CHECK_SECONDS = 2.0
MIN_READ_SECONDS = 1.0


def _read() -> dict[str, Any]:
    with session_scope() as s:
        return live_state(s).model_dump(mode="json")


async def wait_any(broadcaster: Broadcaster, events: list[asyncio.Event], timeout: float) -> None:
    """Return when any of `events` fires or after `timeout`; poll the database when Redis is absent (as
    Broadcaster.wait does for one event)."""
    if not broadcaster.connected:
        await asyncio.sleep(min(timeout, get_settings().poll_seconds))
    else:
        waiters = [asyncio.ensure_future(e.wait()) for e in events]
        try:
            await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
    for e in events:
        e.clear()


async def workers_events(broadcaster: Broadcaster) -> AsyncIterator[dict[str, str]]:
    """Yield the workers' state now and whenever it changes, for as long as the client listens."""
    last: dict[str, Any] | None = None
    with contextlib.ExitStack() as stack:
        # Registered before the first read, so a report between a read and the wait is never lost.
        wakes = [stack.enter_context(broadcaster.listen(key)) for key in (any_key("worker"), ANY_JOB)]
        read_at = -math.inf
        while True:
            # Every job publishes at each logged step: a look (three queries) at most once a second.
            await asyncio.sleep(max(0.0, read_at + MIN_READ_SECONDS - time.monotonic()))
            read_at = time.monotonic()
            state = await to_thread.run_sync(_read)
            # The clock moves on every read; only what a person sees decides whether to send.
            seen = {k: v for k, v in state.items() if k != "now"}
            if seen != last:
                last = seen
                yield {"event": "workers", "data": json.dumps(state)}
            await wait_any(broadcaster, wakes, LIVE_CHECK_SECONDS)
