"""Server-sent events for one job: replay from the database after Last-Event-ID, then follow live.

The event id is "<last metric id>:<last event id>", so a reconnect resumes exactly where it left off.
"""

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from anyio import to_thread
from sqlalchemy import select

from backend.db import FINAL_STATUSES, Job, session_scope
from backend.events import ANY_JOB, Broadcaster
from backend.job import service
from backend.job.schemas import EventRead
from backend.schemas import MAX_ID

# How long to wait for a Redis wake-up before looking at the database anyway.
SAFETY_POLL_SECONDS = 5.0


def parse_cursor(value: str | None) -> tuple[int, int]:
    try:
        m, e = (value or "0:0").split(":", 1)
        return min(MAX_ID, max(0, int(m))), min(MAX_ID, max(0, int(e)))
    except ValueError:
        return 0, 0


def _read(job_id: int, cursor: tuple[int, int]) -> tuple[dict[str, Any], list[Any], list[Any]]:
    with session_scope() as s:
        job = s.get(Job, job_id)
        assert job is not None
        snapshot = service.to_read(s, job).model_dump(mode="json")
        metrics = [metric_dict(m) for m in service.metrics_after(s, job_id, cursor[0])]
        events = [
            EventRead.model_validate(e).model_dump(mode="json") for e in service.events_after(s, job_id, cursor[1])
        ]
    return snapshot, metrics, events


def metric_dict(m: Any) -> dict[str, Any]:
    return {"id": m.id, "step": m.step, "created_at": m.created_at.isoformat(), "values": m.values}


def _progress_key(snapshot: dict[str, Any]) -> tuple[Any, ...]:
    keys = ("status", "current_step", "total_steps", "cancel_requested", "pause_requested", "error")
    return tuple(snapshot[k] for k in keys)


async def job_events(job_id: int, cursor: tuple[int, int], broadcaster: Broadcaster) -> AsyncIterator[dict[str, str]]:
    """Yield SSE dicts (event, id, data) until the job has ended and everything was sent."""
    with broadcaster.listen(job_id) as wake:
        async for item in _follow(job_id, cursor, broadcaster, wake):
            yield item


async def _follow(
    job_id: int, cursor: tuple[int, int], broadcaster: Broadcaster, wake: asyncio.Event
) -> AsyncIterator[dict[str, str]]:
    last_key: tuple[Any, ...] | None = None
    while True:
        snapshot, metrics, events = await to_thread.run_sync(_read, job_id, cursor)
        for m in metrics:
            cursor = (m["id"], cursor[1])
            yield {"event": "metric", "id": f"{cursor[0]}:{cursor[1]}", "data": json.dumps(m)}
        for e in events:
            cursor = (cursor[0], e["id"])
            yield {"event": "log", "id": f"{cursor[0]}:{cursor[1]}", "data": json.dumps(e)}
        key = _progress_key(snapshot)
        if key != last_key or metrics:
            last_key = key
            yield {"event": "job", "id": f"{cursor[0]}:{cursor[1]}", "data": json.dumps(snapshot)}
        # A paused job rests until someone resumes it: end the stream, the page reconnects on resume.
        final = snapshot["status"] in (*FINAL_STATUSES, "paused")
        if final and not metrics and not events:
            yield {
                "event": "end",
                "id": f"{cursor[0]}:{cursor[1]}",
                "data": json.dumps({"status": snapshot["status"]}),
            }
            return
        if not final:  # once final, read again at once: only the tail is left to send
            await broadcaster.wait(wake, SAFETY_POLL_SECONDS)


# The jobs list: what a row shows that can change. Jobs have no updated_at column, so each look compares this
# cheap tuple per job (one narrow query) and builds the full view only for the rows that changed.
LIST_COLUMNS = (
    Job.id,
    Job.status,
    Job.current_step,
    Job.total_steps,
    Job.final_loss,
    Job.cancel_requested,
    Job.pause_requested,
)
LIST_LIMIT = 200  # as many as the list page renders


def _changed_jobs(user_id: int, is_admin: bool, seen: dict[int, tuple[Any, ...]]) -> list[dict[str, Any]]:
    """Views of the visible jobs whose row differs from `seen` (all of them the first time), newest first;
    `seen` is updated in place."""
    with session_scope() as s:
        q = select(*LIST_COLUMNS).order_by(Job.id.desc()).limit(LIST_LIMIT)
        if not is_admin:
            q = q.where(Job.owner_id == user_id)
        changed = []
        for row in s.execute(q):
            key = tuple(row)
            if seen.get(row.id) != key:
                seen[row.id] = key
                changed.append(row.id)
        if not changed:
            return []
        jobs = s.scalars(select(Job).where(Job.id.in_(changed)).order_by(Job.id.desc()))
        return [service.to_read(s, job).model_dump(mode="json") for job in jobs]


async def jobs_list_events(user_id: int, is_admin: bool, broadcaster: Broadcaster) -> AsyncIterator[dict[str, str]]:
    """Yield a `job` event per visible job (the snapshot is the replay: a reconnect resyncs), then one per job
    whenever its row changes, for as long as the client listens."""
    seen: dict[int, tuple[Any, ...]] = {}
    # Registered before the first read, so a change between the read and the wait is never lost.
    with broadcaster.listen(ANY_JOB) as wake:
        while True:
            for job in await to_thread.run_sync(_changed_jobs, user_id, is_admin, seen):
                yield {"event": "job", "data": json.dumps(job)}
            # Redis says "look again" on any job's write; the safety poll also catches writers that don't publish.
            await broadcaster.wait(wake, SAFETY_POLL_SECONDS)
