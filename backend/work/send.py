"""Sending work to the broker: after the commit, and never the only copy of the fact that work is waiting."""

import logging
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import timedelta

from backend.config import get_settings
from backend.db import session_scope
from backend.events import publish
from backend.queue import celery_app
from backend.work import placement
from backend.work.kinds import JOB
from backend.work.lease import Kind

log = logging.getLogger(__name__)


def send(kind: Kind, row_id: int, *, avoid: str | None = None) -> bool:
    """Send the task for queued work (call after the row is committed): a job through placement, to the queue of
    a free worker it fits (or it waits, saying why), other work to its kind's queue. False when the broker is
    unreachable: the row stays queued and the reaper's sweep sends it again once the broker is back, so nothing
    is lost. `avoid`: a worker that must not get it (leaving, or refusing it)."""
    if kind.placed:
        return row_id not in place(include=[row_id], avoid=avoid).undelivered
    return deliver(kind, row_id, kind.queue)


def deliver(kind: Kind, row_id: int, queue: str) -> bool:
    try:
        celery_app().send_task(kind.task, args=[row_id], queue=queue)
    except Exception as exc:
        log.warning("could not send %s %s to the broker (the sweep will retry): %s", kind.name, row_id, exc)
        return False
    return True


@dataclass
class Sent:
    """What one placement sent: job ids delivered to their worker's queue, and placed but not delivered (the
    broker unreachable: the sweep places them again after STUDIO_REDELIVER_SECONDS)."""

    delivered: list[int] = field(default_factory=list)
    undelivered: list[int] = field(default_factory=list)


def place(*, include: Collection[int] = (), avoid: str | None = None) -> Sent:
    """Place the queued jobs waiting for a worker (and `include`), highest priority first, then send each to its
    worker's queue. Called when a job is queued, by a worker that registers or finishes, and by the reaper's
    sweep: a job that fits no free worker now is placed by the next of these that finds one."""
    after = timedelta(seconds=get_settings().redeliver_seconds)
    with session_scope() as s:
        decisions = placement.route(s, after=after, include=include, avoid=avoid)
    sent = Sent()
    for d in decisions:
        if d.queue is not None:
            (sent.delivered if deliver(JOB, d.job_id, d.queue) else sent.undelivered).append(d.job_id)
        if d.changed:
            publish(d.job_id)
    return sent
