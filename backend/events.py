"""Live job updates. The database holds every point; Redis pub/sub (server mode) only says "look again".

Workers call `publish(job_id)` after writing rows. Each API process holds one `Broadcaster`, with a single
Redis subscription fanned out to its SSE clients; in embedded mode clients poll the database instead.
"""

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Iterator
from urllib.parse import urlsplit

import redis
import redis.asyncio as aioredis

from backend.config import get_settings


def channel(redis_url: str) -> str:
    """The pub/sub channel of one deployment. Channels are global to a Redis server (not per db number), so
    studios sharing a server on different db numbers must not hear each other."""
    db = urlsplit(redis_url).path.strip("/") or "0"
    return f"studio:{db}:jobs"


log = logging.getLogger(__name__)

_publisher: tuple[str, redis.Redis] | None = None


def publish(job_id: int) -> None:
    """Tell listening API processes that job `job_id` has new rows. Best effort: the DB is the truth."""
    _publish(str(job_id))


def generation_key(generation_id: int) -> str:
    """The wake-up key of a playground generation: it shares the jobs' channel (one subscription per process),
    and a prefix keeps its ids apart from job ids."""
    return f"generation:{generation_id}"


def publish_generation(generation_id: int) -> None:
    """Tell listening API processes that generation `generation_id` has more output. Best effort."""
    _publish(generation_key(generation_id))


def model_key(model_id: int) -> str:
    """The wake-up key of a model's import progress (same channel, its own prefix)."""
    return f"model:{model_id}"


def publish_model(model_id: int) -> None:
    """Tell listening API processes that model `model_id` changed (import progress, ready, failed). Best effort."""
    _publish(model_key(model_id))


def analysis_key(analysis_id: int) -> str:
    """The wake-up key of a dataset analysis (statistics, render, hygiene): its progress and its end."""
    return f"analysis:{analysis_id}"


def publish_analysis(analysis_id: int) -> None:
    """Tell listening API processes that analysis `analysis_id` progressed or ended. Best effort."""
    _publish(analysis_key(analysis_id))


def export_key(export_id: int) -> str:
    """The wake-up key of a weights export (loading, merging, saving, zipping)."""
    return f"export:{export_id}"


def publish_export(export_id: int) -> None:
    """Tell listening API processes that export `export_id` progressed or ended. Best effort."""
    _publish(export_key(export_id))


def worker_key(name: str) -> str:
    """The wake-up key of a worker's registry row (heartbeat, current job)."""
    return f"worker:{name}"


def publish_worker(name: str) -> None:
    """Tell listening API processes that worker `name` reported in. Best effort."""
    _publish(worker_key(name))


def _publish(key: str) -> None:
    global _publisher
    url = get_settings().redis_url
    if not url:
        return
    try:
        if _publisher is None or _publisher[0] != url:
            _publisher = (url, redis.Redis.from_url(url, socket_timeout=2))
        _publisher[1].publish(channel(url), key)
    except redis.RedisError as exc:
        log.warning("could not publish update %s: %s", key, exc)


# The key a listener registers under to hear about every job (the live jobs list); generations are not jobs.
ANY_JOB = "job:*"


def any_key(prefix: str) -> str:
    """The key a listener registers under to hear about every key with `prefix` ("model" → every model_key):
    the live lists (models, workers) listen so."""
    return f"{prefix}:*"


def _key(data: bytes | str) -> int | str:
    """A message's key: a job id, or a prefixed key such as generation_key's."""
    text = data.decode() if isinstance(data, bytes) else data
    return int(text) if text.isdigit() else text


async def pace(last: float, seconds: float) -> float:
    """Wait until `seconds` after `last` (a time.monotonic() reading, -inf at first); return the new reading. A
    stream that reads a whole list calls it before each read: one read per `seconds`, however many wake-ups."""
    await asyncio.sleep(max(0.0, last + seconds - time.monotonic()))
    return time.monotonic()


class Broadcaster:
    """One Redis subscription per process; each SSE client waits on an asyncio.Event for its job."""

    def __init__(self, redis_url: str) -> None:
        self.redis_url = redis_url
        self._waiters: dict[int | str, set[asyncio.Event]] = defaultdict(set)
        self._task: asyncio.Task[None] | None = None
        self.connected = False

    async def start(self) -> None:
        if self.redis_url and self._task is None:
            self._task = asyncio.create_task(self._listen())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            # Bounded: closing a pub/sub connection mid-read can hang in the client, and shutdown must not.
            await asyncio.wait({self._task}, timeout=2.0)
            self._task = None

    async def _listen(self) -> None:
        while True:
            try:
                client = aioredis.Redis.from_url(self.redis_url)
                async with client.pubsub() as pubsub:
                    await pubsub.subscribe(channel(self.redis_url))
                    self.connected = True
                    async for message in pubsub.listen():
                        if message.get("type") == "message":
                            self._wake(_key(message["data"]))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # reconnect on any Redis failure; clients fall back to polling
                log.warning("redis subscription lost: %s; retrying", exc)
            finally:
                self.connected = False
            await asyncio.sleep(1.0)

    def _wake(self, job_id: int | str) -> None:
        for event in self._waiters.get(job_id, ()):
            event.set()
        if isinstance(job_id, int):
            for event in self._waiters.get(ANY_JOB, ()):
                event.set()
        elif ":" in job_id:
            for event in self._waiters.get(any_key(job_id.split(":", 1)[0]), ()):
                event.set()

    @contextlib.contextmanager
    def listen(self, *keys: int | str) -> Iterator[asyncio.Event]:
        """Register for wake-ups about each of `keys` (a job id, a prefixed key, an `any_key`) for the life of an
        SSE stream, before its first read, so a publish between a read and a wait is never lost. One event for
        all of them: a publish of any wakes the stream."""
        event = asyncio.Event()
        for key in keys:
            self._waiters[key].add(event)
        try:
            yield event
        finally:
            for key in keys:
                self._waiters[key].discard(event)
                if not self._waiters[key]:
                    del self._waiters[key]

    async def wait(self, event: asyncio.Event, timeout: float) -> None:
        """Return when `event` fires (Redis said "look again"), or after `timeout`; poll when Redis is absent."""
        if not self.connected:
            await asyncio.sleep(get_settings().poll_seconds)
        else:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), timeout)
        event.clear()

    @property
    def client_count(self) -> int:
        return sum(len(s) for s in self._waiters.values())
