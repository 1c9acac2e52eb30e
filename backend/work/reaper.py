"""Recovery: expired leases back to the queue (or failed, once the attempts are spent), unclaimed work re-sent.

The API runs `sweep` every `STUDIO_REAP_INTERVAL_SECONDS`. Each kind says what its expired work becomes
(`RECOVER`): a job resumes from its newest complete checkpoint, an export, an analysis or an import starts over, a
playground answer fails (its half-streamed text cannot be taken back). A worker that finds its own name on running
work when a task starts (its previous process died) recovers it at once with the same function (`reclaim_own`).
"""

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from backend.config import get_settings
from backend.dataset.analysis import recover_analysis
from backend.db import session_scope
from backend.events import publish, publish_analysis, publish_export, publish_generation, publish_model
from backend.export.lifecycle import recover_export
from backend.job.recovery import recover_job
from backend.model.imports import recover_import
from backend.playground.lifecycle import recover_generation
from backend.work import lease
from backend.work.kinds import ANALYSIS, EXPORT, GENERATION, IMPORT, JOB
from backend.work.lease import Expired, Kind, Lease
from backend.work.retry import transient
from backend.work.send import place, send
from backend.worker.service import live_workers

log = logging.getLogger(__name__)

# What expired work becomes: True = queued again (the task is sent after the commit), False = ended.
Recover = Callable[[Session, Expired, int], bool]


@dataclass(frozen=True)
class Recovery:
    kind: Kind
    recover: Recover
    publish: Callable[[int], None]


RECOVERIES = {
    r.kind.name: r
    for r in (
        Recovery(JOB, recover_job, publish),
        Recovery(EXPORT, recover_export, publish_export),
        Recovery(GENERATION, recover_generation, publish_generation),
        Recovery(ANALYSIS, recover_analysis, publish_analysis),
        Recovery(IMPORT, recover_import, publish_model),
    )
}


@dataclass
class Swept:
    """What one sweep did, by kind name: ids queued again, ended, and re-sent to the broker."""

    requeued: dict[str, list[int]] = field(default_factory=dict)
    ended: dict[str, list[int]] = field(default_factory=dict)
    resent: dict[str, list[int]] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return any(self.requeued.values()) or any(self.ended.values()) or any(self.resent.values())


def reap(recovery: Recovery, swept: Swept) -> None:
    """Recover the kind's running work whose lease expired."""
    settings = get_settings()
    requeued: list[int] = []
    ended: list[int] = []
    with session_scope() as s:
        for row in lease.expired(s, recovery.kind, timedelta(seconds=settings.lease_seconds)):
            (requeued if recovery.recover(s, row, settings.max_attempts) else ended).append(row.id)
    for row_id in requeued:
        send(recovery.kind, row_id)
    for row_id in requeued + ended:
        recovery.publish(row_id)
    swept.requeued[recovery.kind.name], swept.ended[recovery.kind.name] = requeued, ended


def resend(recovery: Recovery, swept: Swept) -> None:
    """Send again the kind's queued work that no worker claimed in time: its message may be lost (a broker
    restart, a worker killed before it acknowledged). A duplicate costs one refused claim."""
    after = timedelta(seconds=get_settings().redeliver_seconds)
    swept.resent[recovery.kind.name] = []
    if recovery.kind.placed:
        # Jobs go only to a free worker they fit, by priority: placement re-sends the unclaimed ones with the rest.
        swept.resent[recovery.kind.name] = place().delivered
        return
    with session_scope() as s:
        if not can_take(s, recovery.kind):
            return  # re-sending would only pile copies up in the broker
        ids = lease.unclaimed(s, recovery.kind, after)
    swept.resent[recovery.kind.name] = [row_id for row_id in ids if send(recovery.kind, row_id)]


def can_take(session: Session, kind: Kind) -> bool:
    """Whether a live worker consumes the kind's queue: re-sent work could be taken now."""
    return bool(live_workers(session, kind.queue))


def sweep() -> Swept:
    """One pass over every kind: reap expired leases, then re-send unclaimed work."""
    swept = Swept()
    for recovery in RECOVERIES.values():
        try:
            reap(recovery, swept)
            resend(recovery, swept)
        except Exception as exc:  # one kind's trouble must not hold up the others' recovery
            if not transient(exc):
                log.exception("recovering %s work failed", recovery.kind.name)
            else:
                raise
    return swept


def hand_back(held: Lease) -> None:
    """This worker is leaving with work it could not finish or checkpoint within its grace: recover it now as the
    reaper would once the lease ran out (a job from its newest checkpoint, an export from scratch, an answer
    failed), without counting the attempt against STUDIO_MAX_ATTEMPTS: a shutdown is no failure."""
    recovery = RECOVERIES[held.kind.name]
    t = held.kind.table
    with session_scope() as s:
        row = lease.as_expired(s, held)
        if row is None:
            return  # no longer ours
        s.execute(update(t).where(t.id == row.id).values(attempt_base=t.attempt_base + 1))
        requeued = recovery.recover(s, replace(row, attempt_base=row.attempt_base + 1), get_settings().max_attempts)
    if requeued:
        send(held.kind, held.id)
    recovery.publish(held.id)


def recover_orphans(kind: Kind, worker: str) -> list[int]:
    """Called by an idle worker at each beat: the kind's running work still held under its own name was held by
    a previous process of this worker (`studio up` restarted, a container replaced), and is recovered as soon as
    its heartbeat has been silent a few beats, instead of after the whole lease. Returns the ids queued again."""
    settings = get_settings()
    recovery = RECOVERIES[kind.name]
    quiet = timedelta(seconds=3 * settings.heartbeat_seconds)
    t = kind.table
    requeued: list[int] = []
    with session_scope() as s:
        held = list(s.scalars(select(t.id).where(kind.is_running(), t.lease_worker == worker)))
    for row_id in held:
        with session_scope() as s:
            row = lease.orphaned(s, kind, row_id, worker, quiet)
            again = isinstance(row, Expired) and recovery.recover(s, row, settings.max_attempts)
        if isinstance(row, Expired):
            log.warning("%s %s was held by a previous process of %s; recovered", kind.name, row_id, worker)
            if again:
                requeued.append(row_id)
                send(kind, row_id)
            recovery.publish(row_id)
    return requeued


def reclaim_own(kind: Kind, row_id: int, worker: str) -> None:
    """Before claiming: recover work that `worker`'s own name still holds (its previous process died), so the
    claim that follows can take it within a few heartbeats instead of after the whole lease."""
    settings = get_settings()
    recovery = RECOVERIES[kind.name]
    # Silent for three beats: a live holder (a second process misconfigured with the same name) would have beaten.
    quiet = timedelta(seconds=3 * settings.heartbeat_seconds)
    deadline = time.monotonic() + 2 * quiet.total_seconds()
    while True:
        with session_scope() as s:
            row = lease.orphaned(s, kind, row_id, worker, quiet)
            if isinstance(row, Expired):
                recovery.recover(s, row, settings.max_attempts)
        if isinstance(row, Expired):
            recovery.publish(row_id)
        if row is not True or time.monotonic() > deadline:
            return
        time.sleep(settings.heartbeat_seconds / 2)
