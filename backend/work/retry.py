"""Riding out database blips in workers: retry a write with backoff, or keep it in order in memory until it lands.

A worker trains for hours; a database restart or a failover of a few seconds must cost it no step and no metric
point. Writes the run can go on without (metrics, events, watch-prompt answers, progress) go through the `Outbox`:
tried at once, kept in order in memory while the database is unreachable, and written as soon as it is back. Writes
the run cannot go on without (a claim, the end) are retried in place. Both give up after the lease: by then the
reaper may have handed the work to another worker, and this one must stop anyway.
"""

import logging
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from backend.config import get_settings

log = logging.getLogger(__name__)
T = TypeVar("T")

FIRST_DELAY = 0.2
MAX_DELAY = 5.0


# SQLite reports a bad query (no such column, a syntax error) as OperationalError too: only these are about the file.
SQLITE_TRANSIENT = ("database is locked", "unable to open", "disk i/o error", "database is busy")


def transient(exc: BaseException) -> bool:
    """A failure that says the database could not be reached (or dropped the connection), not that the write
    was wrong: worth trying again. A programming error (a missing column, bad SQL) never is."""
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    if not isinstance(exc, OperationalError | InterfaceError):
        return False
    if isinstance(exc.orig, sqlite3.Error):
        return any(text in str(exc.orig).lower() for text in SQLITE_TRANSIENT)
    return True  # psycopg raises OperationalError for connections refused, dropped or timed out


def patience() -> float:
    """How long a worker keeps trying: its lease, after which its work is presumed lost to it."""
    return float(get_settings().lease_seconds)


def retrying(write: Callable[[], T], *, seconds: float | None = None) -> T:
    """Run `write` (one short transaction), again with backoff while the database is unreachable, for at most
    `seconds` (default: the lease); then raise the last error."""
    deadline = time.monotonic() + (patience() if seconds is None else seconds)
    delay = FIRST_DELAY
    while True:
        try:
            return write()
        except Exception as exc:
            if not transient(exc) or time.monotonic() + delay > deadline:
                raise
            log.warning("database unreachable (%s); retrying in %.1f s", type(exc).__name__, delay)
        time.sleep(delay)
        delay = min(delay * 2, MAX_DELAY)


class OutboxExpired(Exception):
    """Writes waited in memory longer than the lease: the database has been gone too long to go on."""


class Outbox:
    """Writes kept in order while the database is unreachable, flushed by a thread once it is back.

    `put` never blocks on the database for long: it writes at once when nothing is waiting, else queues behind
    what is. A write that fails for another reason (LeaseLost, a bug) is not retried: `put` and `drain` raise it
    to the caller, so a worker whose lease was taken over stops at its next write."""

    def __init__(self) -> None:
        self._pending: deque[tuple[float, Callable[[], None]]] = deque()
        self._lock = threading.Lock()
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None

    def put(self, write: Callable[[], None]) -> None:
        self._raise_error()
        with self._lock:
            if not self._pending:
                try:
                    write()
                    return
                except Exception as exc:
                    if not transient(exc):
                        raise
                    log.warning("database unreachable (%s); keeping writes in memory", type(exc).__name__)
            self._pending.append((time.monotonic(), write))
            self._start()

    def pending(self) -> int:
        return len(self._pending)

    def drain(self, seconds: float | None = None) -> None:
        """Wait until every kept write is in the database (at most `seconds`, default the lease)."""
        deadline = time.monotonic() + (patience() if seconds is None else seconds)
        while self._pending and self._error is None and time.monotonic() < deadline:
            time.sleep(0.05)
        self._raise_error()
        if self._pending:
            raise OutboxExpired(f"{len(self._pending)} writes still waiting for the database")

    def clear(self) -> None:
        """Forget what is kept (the work ended without them: its lease is gone)."""
        with self._lock:
            self._pending.clear()
            self._error = None

    def _raise_error(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            self._pending.clear()
            raise error

    def _start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._flush, name="outbox", daemon=True)
            self._thread.start()

    def _flush(self) -> None:
        delay = FIRST_DELAY
        while True:
            with self._lock:
                if not self._pending:
                    return
                since, write = self._pending[0]
                try:
                    write()
                    self._pending.popleft()
                    delay = FIRST_DELAY
                    continue
                except Exception as exc:
                    if not transient(exc):
                        self._error = exc
                        return
                    if time.monotonic() - since > patience():
                        self._error = OutboxExpired(
                            f"the database has been unreachable for over {patience():.0f} s; "
                            f"{len(self._pending)} writes could not be stored"
                        )
                        return
            time.sleep(delay)
            delay = min(delay * 2, MAX_DELAY)


# One per process: a worker process does one piece of work at a time.
outbox = Outbox()
