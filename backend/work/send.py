"""Sending work to the broker: after the commit, and never the only copy of the fact that work is waiting."""

import logging

from backend.queue import celery_app
from backend.work.lease import Kind

log = logging.getLogger(__name__)


def send(kind: Kind, row_id: int) -> bool:
    """Send the task for queued work (call after the row is committed). False when the broker is unreachable:
    the row stays queued and the reaper's sweep sends it again once the broker is back, so nothing is lost."""
    try:
        celery_app().send_task(kind.task, args=[row_id], queue=kind.queue)
    except Exception as exc:
        log.warning("could not send %s %s to the broker (the sweep will retry): %s", kind.name, row_id, exc)
        return False
    return True
