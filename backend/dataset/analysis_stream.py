"""Server-sent events for one dataset analysis: an `analysis` event now and whenever its state or progress
changes, then `end` once it is done or failed. A lost worker's analysis is queued again by the reaper
(`backend.work`), so the stream follows it to its end.

The first event is the snapshot, so a reconnect resyncs. The worker publishes `analysis_key` after each
write (claim, progress, finish); Redis wakes the stream, the safety poll covers a missed message, and in
embedded mode the broadcaster polls the database.
"""

import json
from collections.abc import AsyncIterator
from typing import Any

from anyio import to_thread

from backend.dataset.analysis import FINISHED
from backend.dataset.analysis_schemas import AnalysisRead
from backend.db import DatasetAnalysis, session_scope
from backend.events import Broadcaster, analysis_key

SAFETY_POLL_SECONDS = 5.0  # a missed publish costs at most this long


def _read(analysis_id: int) -> dict[str, Any] | None:
    """The analysis as the API shows it (None once deleted)."""
    with session_scope() as s:
        row = s.get(DatasetAnalysis, analysis_id)
        return AnalysisRead.model_validate(row).model_dump(mode="json") if row is not None else None


async def analysis_events(analysis_id: int, broadcaster: Broadcaster) -> AsyncIterator[dict[str, str]]:
    """Yield the analysis whenever it changes, until it has ended (or its dataset was deleted)."""
    last: dict[str, Any] | None = None
    # Registered before the first read, so a write between a read and the wait is never lost.
    with broadcaster.listen(analysis_key(analysis_id)) as wake:
        while True:
            view = await to_thread.run_sync(_read, analysis_id)
            if view is None:
                yield {"event": "end", "data": json.dumps({"status": "deleted"})}
                return
            if view != last:
                last = view
                yield {"event": "analysis", "data": json.dumps(view)}
            if view["status"] in FINISHED:
                yield {"event": "end", "data": json.dumps({"status": view["status"]})}
                return
            await broadcaster.wait(wake, SAFETY_POLL_SECONDS)
