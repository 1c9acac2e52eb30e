"""How every task takes its work: first recover what a dead previous process of this worker held, then claim."""

import logging
from collections.abc import Callable

from backend.work.lease import Kind, Lease
from backend.work.reaper import reclaim_own
from backend.work.send import send
from workers import registry, shutdown

log = logging.getLogger(__name__)


def take(kind: Kind, row_id: int, claim: Callable[[int, str], Lease | None]) -> Lease | None:
    """This worker's lease on queued work, claimed with `claim(row_id, worker)`; None when another delivery has
    it (Celery may deliver a task twice), it has ended, or this worker is shutting down (the task is sent on to
    the next worker), and the task has nothing to do."""
    if shutdown.requested():
        send(kind, row_id)
        return None
    worker = registry.worker_name()
    reclaim_own(kind, row_id, worker)
    won = claim(row_id, worker)
    if won is None:
        log.info("%s %s is not waiting (claimed by another delivery, or ended); skipping", kind.name, row_id)
    return won
