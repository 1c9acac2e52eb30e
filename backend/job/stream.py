"""Server-sent events for one job: replay from the database after Last-Event-ID, then follow live.

The event id is "<last metric id>:<last event id>", so a reconnect resumes exactly where it left off.
"""

import asyncio
import contextlib
import json
import logging
import weakref
from collections.abc import AsyncIterator, Iterator
from typing import Any, NamedTuple

from anyio import to_thread
from sqlalchemy import select

from backend.db import FINAL_STATUSES, Job, session_scope
from backend.events import ANY_JOB, Broadcaster
from backend.job import service
from backend.job.schemas import EventRead
from backend.schemas import MAX_ID

log = logging.getLogger(__name__)
# How long to wait for a Redis wake-up before looking at the database anyway.
SAFETY_POLL_SECONDS = 5.0


def parse_cursor(value: str | None) -> tuple[int, int]:
    try:
        m, e = (value or "0:0").split(":", 1)
        return min(MAX_ID, max(0, int(m))), min(MAX_ID, max(0, int(e)))
    except ValueError:
        return 0, 0


class Batch(NamedTuple):
    """One read of a job's new rows after `start` up to `end` (cursors), serialized once for every listener."""

    start: tuple[int, int]
    end: tuple[int, int]
    snapshot: dict[str, Any]
    snapshot_json: str
    metrics: list[tuple[int, str]]  # (id, JSON)
    events: list[tuple[int, str]]


def _read(job_id: int, cursor: tuple[int, int] | None) -> Batch:
    """The job's snapshot and its rows after `cursor`; None: none, the cursor is the newest row now (a feed's start)."""
    with session_scope() as s:
        job = s.get(Job, job_id)
        assert job is not None
        snapshot = service.to_read(s, job).model_dump(mode="json")
        if cursor is None:
            newest = (service.newest_metric_id(s, job_id), service.newest_event_id(s, job_id))
            return Batch(newest, newest, snapshot, json.dumps(snapshot), [], [])
        metrics = [(m.id, json.dumps(metric_dict(m))) for m in service.metrics_after(s, job_id, cursor[0])]
        events = [
            (e.id, EventRead.model_validate(e).model_dump_json()) for e in service.events_after(s, job_id, cursor[1])
        ]
    end = (metrics[-1][0] if metrics else cursor[0], events[-1][0] if events else cursor[1])
    return Batch(cursor, end, snapshot, json.dumps(snapshot), metrics, events)


def metric_dict(m: Any) -> dict[str, Any]:
    return {"id": m.id, "step": m.step, "created_at": m.created_at.isoformat(), "values": m.values}


def _progress_key(snapshot: dict[str, Any]) -> tuple[Any, ...]:
    keys = ("status", "current_step", "total_steps", "cancel_requested", "pause_requested", "error")
    return tuple(snapshot[k] for k in keys)


# A listener this far behind the feed stops queueing its batches and catches up with a read of its own.
MAX_QUEUED = 64


class _Feed:
    """Every dashboard on one job in this process, fed by one database read per wake-up: fifty open pages cost
    one read of the new rows, not fifty. Listeners keep their own cursors (a reconnect resumes anywhere) and
    read on their own only to replay, to catch up, or past the end."""

    def __init__(self, job_id: int, broadcaster: Broadcaster, feeds: dict[int, "_Feed"]) -> None:
        self.job_id, self.broadcaster, self.feeds = job_id, broadcaster, feeds
        self.queues: set[asyncio.Queue[Batch | None]] = set()
        self.task: asyncio.Task[None] | None = None

    async def run(self) -> None:
        try:
            with self.broadcaster.listen(self.job_id) as wake:
                cursor: tuple[int, int] | None = None  # from the newest rows at the first read
                while self.queues:
                    try:
                        batch = await to_thread.run_sync(_read, self.job_id, cursor)
                    except Exception as exc:  # the database is away: each listener reads (and fails) for itself
                        log.warning("job %s feed could not read: %s", self.job_id, exc)
                        self._send(None)
                    else:
                        if cursor is not None:
                            self._send(batch)
                        cursor = batch.end
                    await self.broadcaster.wait(wake, SAFETY_POLL_SECONDS)
        finally:
            if self.feeds.get(self.job_id) is self:
                del self.feeds[self.job_id]

    def _send(self, batch: Batch | None) -> None:
        for queue in self.queues:
            # A listener far behind (a stalled client) gets None: catch up with a read of your own.
            queue.put_nowait(batch if queue.qsize() < MAX_QUEUED else None)

    @contextlib.contextmanager
    def listen(self) -> Iterator[asyncio.Queue[Batch | None]]:
        queue: asyncio.Queue[Batch | None] = asyncio.Queue()
        self.queues.add(queue)
        if self.task is None:
            self.task = asyncio.create_task(self.run())
        try:
            yield queue
        finally:
            self.queues.discard(queue)


_feeds: "weakref.WeakKeyDictionary[Broadcaster, dict[int, _Feed]]" = weakref.WeakKeyDictionary()


async def _next_batch(queue: asyncio.Queue[Batch | None]) -> Batch | None:
    """The feed's next batch; None (read for yourself) when none came in two of the feed's safety polls."""
    try:
        return await asyncio.wait_for(queue.get(), 2 * SAFETY_POLL_SECONDS)
    except TimeoutError:
        return None


def _feed(job_id: int, broadcaster: Broadcaster) -> _Feed:
    feeds = _feeds.setdefault(broadcaster, {})
    if job_id not in feeds:
        feeds[job_id] = _Feed(job_id, broadcaster, feeds)
    return feeds[job_id]


def _covers(batch: Batch, cursor: tuple[int, int]) -> bool:
    """Whether `batch` holds every row after `cursor` up to its end (it read from no later than the cursor)."""
    return batch.start[0] <= cursor[0] and batch.start[1] <= cursor[1]


async def job_events(job_id: int, cursor: tuple[int, int], broadcaster: Broadcaster) -> AsyncIterator[dict[str, str]]:
    """Yield SSE dicts (event, id, data) until the job has ended and everything was sent."""
    # Registered before the replay read, so no batch read after it is missed; ids already sent are skipped.
    with _feed(job_id, broadcaster).listen() as queue:
        async for item in _follow(job_id, cursor, queue):
            yield item


async def _follow(
    job_id: int, cursor: tuple[int, int], queue: "asyncio.Queue[Batch | None]"
) -> AsyncIterator[dict[str, str]]:
    last_key: tuple[Any, ...] | None = None
    batch: Batch | None = await to_thread.run_sync(_read, job_id, cursor)
    while True:
        if batch is None or not _covers(batch, cursor):
            batch = await to_thread.run_sync(_read, job_id, cursor)
        sent = False
        for metric_id, data in batch.metrics:
            if metric_id > cursor[0]:
                cursor, sent = (metric_id, cursor[1]), True
                yield {"event": "metric", "id": f"{cursor[0]}:{cursor[1]}", "data": data}
        for event_id, data in batch.events:
            if event_id > cursor[1]:
                cursor, sent = (cursor[0], event_id), True
                yield {"event": "log", "id": f"{cursor[0]}:{cursor[1]}", "data": data}
        key = _progress_key(batch.snapshot)
        if key != last_key or sent:
            last_key = key
            yield {"event": "job", "id": f"{cursor[0]}:{cursor[1]}", "data": batch.snapshot_json}
        # A paused job rests until someone resumes it: end the stream, the page reconnects on resume.
        final = batch.snapshot["status"] in (*FINAL_STATUSES, "paused")
        if final and not sent:
            status = batch.snapshot["status"]
            yield {"event": "end", "id": f"{cursor[0]}:{cursor[1]}", "data": json.dumps({"status": status})}
            return
        # Once final, read again at once: only the tail is left to send. Else the feed's next batch, or a read of
        # its own should the feed fall silent (its task ended by an error nobody awaited).
        batch = None if final else await _next_batch(queue)


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
        jobs = list(s.scalars(select(Job).where(Job.id.in_(changed)).order_by(Job.id.desc())))
        return [view.model_dump(mode="json") for view in service.to_reads(s, jobs)]


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
