"""How every task takes its work: first recover what a dead previous process of this worker held, then claim."""

import logging
from collections.abc import Callable

from backend.db import session_scope
from backend.events import publish
from backend.work import placement
from backend.work.lease import Kind, Lease
from backend.work.reaper import reclaim_own
from backend.work.send import send
from workers import registry, shutdown

log = logging.getLogger(__name__)


def take(kind: Kind, row_id: int, claim: Callable[[int, str], Lease | None]) -> Lease | None:
    """This worker's lease on queued work, claimed with `claim(row_id, worker)`; None when another delivery has
    it (Celery may deliver a task twice), it has ended, or this worker is shutting down (the task is sent on to
    the next worker), and the task has nothing to do."""
    worker = registry.worker_name()
    if shutdown.requested():
        send(kind, row_id, avoid=worker)
        return None
    reclaim_own(kind, row_id, worker)
    if kind.placed and (_stale(kind, row_id, worker) or _turned_away(kind, row_id, worker)):
        return None
    won = claim(row_id, worker)
    # A claim refused by the per-user limit (another of the owner's jobs started between the check and the
    # claim) leaves the job queued: say why and place it again, as a refusal before the claim would.
    if won is None and not (kind.placed and _turned_away(kind, row_id, worker)):
        log.info("%s %s is not waiting (claimed by another delivery, or ended); skipping", kind.name, row_id)
    return won


def _stale(kind: Kind, row_id: int, worker: str) -> bool:
    """A copy of a delivery the job no longer answers to: it was placed on another worker since. That worker's
    queue holds the live message; this one is dropped (the job, not this copy, is the source of truth)."""
    with session_scope() as s:
        elsewhere = placement.placed_elsewhere(s, row_id, worker)
    if elsewhere is not None:
        log.info("%s %s is placed on %s now; dropping this stale delivery", kind.name, row_id, elsewhere)
    return elsewhere is not None


def _turned_away(kind: Kind, row_id: int, worker: str) -> bool:
    """A job routed here that this worker must not run (it fits no more: the routing is stale, or its owner hit
    the per-user limit meanwhile) stays queued, not failed, and is placed again elsewhere or later."""
    with session_scope() as s:
        reason = placement.refusal(s, row_id, worker)
        if reason is not None:
            placement.turn_away(s, row_id, worker, reason)
    if reason is None:
        return False
    log.info("%s %s not taken by %s: %s", kind.name, row_id, worker, reason)
    publish(row_id)
    send(kind, row_id, avoid=worker)
    return True
