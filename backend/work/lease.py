"""One lifecycle for every kind of background work: training jobs, weight exports, playground answers, dataset
analyses and model imports.

A row waits as `kind.queued` with no lease holder. A worker claims it with a compare-and-set that also takes the
next attempt number, renews the lease with heartbeats while it works, and finishes it. The attempt is a fencing
token: every write the worker makes is conditional on the row still carrying its attempt, so a worker whose lease
was taken over (it stalled past the lease and the reaper gave the work to another) has its writes refused
(`LeaseLost`) and stops. The reaper (`backend.work.reaper`) turns expired leases back into queued work, or into
failures once the attempts are spent, and re-sends queued work that no worker claimed: the broker may lose a
message, the database may not.

Worker code holds its leases in this process (`hold`), so the writers of a domain (`backend.job.lifecycle`, ...)
fence themselves without every call site passing the attempt along.
"""

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, func, or_, select, update
from sqlalchemy.orm import Session

from backend.config import get_settings
from backend.db import utcnow


class LeaseLost(Exception):
    """This worker's attempt no longer owns the row (reaped, taken over, cancelled away): it must stop writing."""


@dataclass(frozen=True)
class Kind:
    """A kind of background work: its table (with `backend.db.lease.Leased` columns and a `status`), the status
    values that mean waiting and working, and the task that does it."""

    name: str  # "job", "export", ... (also what messages call it)
    table: Any  # the ORM class
    task: str  # the Celery task name (backend.queue)
    queue: str
    queued: str = "queued"
    running: str = "running"
    failed: str = "failed"
    # Sent to the queue of a worker it fits, chosen by backend.work.placement, instead of to `queue` (jobs).
    placed: bool = False

    @property
    def status(self) -> Any:
        return self.table.status

    def is_queued(self) -> ColumnElement[bool]:
        return and_(self.status == self.queued, self.table.lease_worker.is_(None))

    def is_running(self) -> ColumnElement[bool]:
        return and_(self.status == self.running, self.table.lease_worker.is_not(None))


@dataclass(frozen=True)
class Lease:
    """What a worker holds after a claim: the row, and the attempt its writes are fenced by."""

    kind: Kind
    id: int
    attempt: int
    worker: str

    def owns(self) -> ColumnElement[bool]:
        """The WHERE clause every write of this worker's carries."""
        t = self.kind.table
        return and_(t.id == self.id, t.attempt == self.attempt, self.kind.is_running())

    def __str__(self) -> str:
        return f"{self.kind.name} {self.id} (attempt {self.attempt})"


def db_now(session: Session) -> datetime:
    """The database's clock on PostgreSQL (leases compare times written by different machines)."""
    if session.get_bind().dialect.name == "postgresql":
        now = session.scalar(select(func.now()))
        assert now is not None
        return now
    return utcnow()


def _rowcount(result: Any) -> int:
    return int(result.rowcount)


# --- the worker's side ------------------------------------------------------------------------------------------

_held: dict[tuple[str, int], Lease] = {}
# When each held lease was last renewed (monotonic clock): a worker cut off from the database for most of a lease
# must stop, since the reaper will soon give its work to another.
_renewed: dict[tuple[str, int], float] = {}
UNRENEWED_LIMIT = 0.75  # the share of the lease


def hold(lease: Lease) -> None:
    """Remember that this process works on `lease`: the domain's writers fence their writes with it."""
    _held[(lease.kind.name, lease.id)] = lease
    _renewed[(lease.kind.name, lease.id)] = time.monotonic()


def release(lease: Lease) -> None:
    if _held.get((lease.kind.name, lease.id)) == lease:
        del _held[(lease.kind.name, lease.id)]
        _renewed.pop((lease.kind.name, lease.id), None)


def all_held() -> list[Lease]:
    """Every lease this process holds."""
    return list(_held.values())


def held(kind: Kind, row_id: int) -> Lease | None:
    """The lease this process holds on the row, if any (None: an API write, or a test driving a recipe)."""
    return _held.get((kind.name, row_id))


@contextmanager
def holding(lease: Lease) -> Iterator[Lease]:
    hold(lease)
    try:
        yield lease
    finally:
        release(lease)


def claim(
    session: Session, kind: Kind, row_id: int, holder: str, *, where: ColumnElement[bool] | None = None, **values: Any
) -> Lease | None:
    """Take queued work for worker `holder` (compare-and-set), with the next attempt number; None if another delivery,
    a cancel or the end got there first. `values` are the kind's own columns to set (started_at, ...)."""
    t = kind.table
    now = db_now(session)
    condition = and_(t.id == row_id, kind.is_queued())
    if where is not None:
        condition = and_(condition, where)
    attempt = session.scalar(select(t.attempt).where(condition).with_for_update())
    if attempt is None:
        return None
    res = session.execute(
        update(t)
        .where(condition, t.attempt == attempt)
        .values(status=kind.running, lease_worker=holder, attempt=attempt + 1, heartbeat_at=now, **values)
        .execution_options(synchronize_session=False)
    )
    return Lease(kind, row_id, attempt + 1, holder) if _rowcount(res) == 1 else None


def fence(session: Session, lease: Lease) -> None:
    """Lock the row for this transaction if `lease` still owns it; raise LeaseLost otherwise. Called before a
    worker's inserts (metrics, events, artifacts), which a WHERE clause cannot guard."""
    t = lease.kind.table
    if session.scalar(select(t.id).where(lease.owns()).with_for_update()) is None:
        raise LeaseLost(f"{lease} lost its lease")


def fence_held(session: Session, kind: Kind, row_id: int) -> None:
    """Fence with the lease this process holds on the row; a process holding none writes unfenced."""
    lease = held(kind, row_id)
    if lease is not None:
        fence(session, lease)


def renew(session: Session, lease: Lease, **values: Any) -> None:
    """Extend the lease (and set `values`: progress); LeaseLost if it is no longer this worker's."""
    t = lease.kind.table
    res = session.execute(
        update(t)
        .where(lease.owns())
        .values(heartbeat_at=db_now(session), **values)
        .execution_options(synchronize_session=False)
    )
    if _rowcount(res) != 1:
        raise LeaseLost(f"{lease} lost its lease")
    _renewed[(lease.kind.name, lease.id)] = time.monotonic()


def unrenewed_for(lease: Lease) -> float:
    """Seconds since this process last renewed `lease` (since it was held, before the first renewal)."""
    return time.monotonic() - _renewed.get((lease.kind.name, lease.id), time.monotonic())


def overdue(lease: Lease) -> bool:
    """Whether this process went most of a lease without renewing it (the database unreachable): the reaper is
    about to give the work to another worker, so this one must stop before two do it."""
    return unrenewed_for(lease) > UNRENEWED_LIMIT * get_settings().lease_seconds


def finish(session: Session, lease: Lease, status: str, **values: Any) -> None:
    """End the work as `status` (done, failed, ...) and let go of the row; LeaseLost if it was not ours any more."""
    t = lease.kind.table
    res = session.execute(
        update(t)
        .where(lease.owns())
        .values(status=status, lease_worker=None, **values)
        .execution_options(synchronize_session=False)
    )
    if _rowcount(res) != 1:
        raise LeaseLost(f"{lease} lost its lease before it could record {status!r}")


def give_back(session: Session, lease: Lease, **values: Any) -> None:
    """Put the work back in the queue (this worker is shutting down); the caller re-sends the task after commit.
    A shutdown is no failure: the attempt does not count against STUDIO_MAX_ATTEMPTS."""
    t = lease.kind.table
    finish(session, lease, lease.kind.queued, sent_at=db_now(session), attempt_base=t.attempt_base + 1, **values)


# --- the API's side: re-queue, reap, re-send ---------------------------------------------------------------------


def requeue(
    session: Session, kind: Kind, row_id: int, *, where: ColumnElement[bool] | None = None, **values: Any
) -> bool:
    """A person queues finished work again (resume, retry; the caller sends the task after commit): the automatic
    retries are counted afresh from here. False if `where` no longer holds (someone else changed the row)."""
    t = kind.table
    extra = {"attempt_base": t.attempt}
    res = session.execute(
        update(t)
        .where(t.id == row_id, where if where is not None else t.id == row_id)
        .values(status=kind.queued, lease_worker=None, sent_at=db_now(session), **extra, **values)
        .execution_options(synchronize_session=False)
    )
    return _rowcount(res) == 1


@dataclass(frozen=True)
class Expired:
    """Running work whose lease ran out: the worker died, hung, or lost its machine."""

    id: int
    attempt: int
    attempt_base: int
    lease_worker: str
    heartbeat_at: datetime | None = None  # as seen: a renewal since then makes the take-over fail

    def spent(self, max_attempts: int) -> bool:
        """Whether the attempts since a person last queued it are used up."""
        return self.attempt - self.attempt_base >= max_attempts

    def next_note(self, max_attempts: int) -> str:
        """e.g. "attempt 2 of 4": the attempt a retry will be, counted from the last time a person queued it."""
        return f"attempt {self.attempt - self.attempt_base + 1} of {max_attempts}"

    def last_note(self, max_attempts: int) -> str:
        return f"attempt {self.attempt - self.attempt_base} of {max_attempts}"


def expired(session: Session, kind: Kind, lease: timedelta) -> list[Expired]:
    t = kind.table
    cutoff = db_now(session) - lease
    stale = or_(t.heartbeat_at.is_(None), t.heartbeat_at < cutoff)
    rows = session.execute(
        select(t.id, t.attempt, t.attempt_base, t.lease_worker, t.heartbeat_at)
        .where(kind.is_running(), stale)
        .with_for_update()
    ).all()
    return [Expired(r.id, r.attempt, r.attempt_base, r.lease_worker, r.heartbeat_at) for r in rows]


def _unchanged(kind: Kind, row: Expired) -> ColumnElement[bool]:
    """The row as the reaper saw it: same attempt, still running, and not renewed since. (SQLite takes no row
    lock on SELECT ... FOR UPDATE, so a renewal between the look and the write must make the write miss.)"""
    t = kind.table
    beat = t.heartbeat_at.is_(None) if row.heartbeat_at is None else t.heartbeat_at == row.heartbeat_at
    return and_(t.id == row.id, t.attempt == row.attempt, kind.is_running(), beat)


def take_over(session: Session, kind: Kind, row: Expired, **values: Any) -> bool:
    """Move expired work back to the queue, unless its worker beat meanwhile (compare-and-set on the attempt)."""
    t = kind.table
    res = session.execute(
        update(t)
        .where(_unchanged(kind, row))
        .values(status=kind.queued, lease_worker=None, sent_at=db_now(session), **values)
        .execution_options(synchronize_session=False)
    )
    return _rowcount(res) == 1


def give_up(session: Session, kind: Kind, row: Expired, *, status: str | None = None, **values: Any) -> bool:
    """End expired work: failed (its attempts are spent), or `status` (compare-and-set on the attempt)."""
    t = kind.table
    res = session.execute(
        update(t)
        .where(_unchanged(kind, row))
        .values(status=status or kind.failed, lease_worker=None, **values)
        .execution_options(synchronize_session=False)
    )
    return _rowcount(res) == 1


def unclaimed(session: Session, kind: Kind, after: timedelta) -> list[int]:
    """Queued work sent more than `after` ago that no worker has claimed; marked as sent again now."""
    t = kind.table
    now = db_now(session)
    ids = list(
        session.scalars(
            select(t.id).where(kind.is_queued(), or_(t.sent_at.is_(None), t.sent_at < now - after)).with_for_update()
        )
    )
    if ids:
        session.execute(update(t).where(t.id.in_(ids)).values(sent_at=now).execution_options(synchronize_session=False))
    return ids


def orphaned(session: Session, kind: Kind, row_id: int, worker: str, quiet: timedelta) -> Expired | bool | None:
    """Whether running work is held under `worker`'s own name, as that worker starts a task for it: a worker
    runs one task at a time, so the holder is a previous process of this worker that died (the OOM killer took the
    pool child, and Celery redelivered its task to the new one). The row when its heartbeat has been silent for
    `quiet` (a few heartbeats: no live process under this name beats it), so it can be recovered without waiting
    for the whole lease; True while it still beats (wait and ask again); None when it is not ours."""
    t = kind.table
    row = session.execute(
        select(t.id, t.attempt, t.attempt_base, t.lease_worker, t.heartbeat_at)
        .where(t.id == row_id, kind.is_running(), t.lease_worker == worker)
        .with_for_update()
    ).one_or_none()
    if row is None:
        return None
    if row.heartbeat_at is not None and row.heartbeat_at > db_now(session) - quiet:
        return True
    return Expired(row.id, row.attempt, row.attempt_base, row.lease_worker, row.heartbeat_at)


def as_expired(session: Session, lease: Lease) -> Expired | None:
    """This worker's own running work, as the reaper would see it once the lease ran out (None if not ours)."""
    t = lease.kind.table
    row = session.execute(
        select(t.id, t.attempt, t.attempt_base, t.lease_worker, t.heartbeat_at).where(lease.owns()).with_for_update()
    ).one_or_none()
    return Expired(row.id, row.attempt, row.attempt_base, row.lease_worker, row.heartbeat_at) if row else None
