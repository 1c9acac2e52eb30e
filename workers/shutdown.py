"""Graceful shutdown: SIGTERM (systemd, `docker stop`, `studio up` stopping, a person) ends a worker within
`STUDIO_SHUTDOWN_GRACE_SECONDS` without losing work.

In the pool child, the process that runs the tasks: a training job saves a checkpoint at its next step's end and
goes back to the queue for any worker to resume (`workers.tasks`); other work (an export, an analysis, an answer) is
given back to the queue as it is, to start over elsewhere. Then the child exits. Whatever is still held when the
grace runs out (a step longer than the grace) is given back the same way, from the last checkpoint.

In Celery's main process, whose warm shutdown would wait for the running task to end (hours for a training job),
the signal is passed on to the pool children, so they do the above at once.
"""

import contextlib
import logging
import os
import signal
import threading
import time
from types import FrameType
from typing import Any

from backend.config import get_settings
from backend.work import lease
from backend.work.reaper import hand_back

log = logging.getLogger(__name__)

_requested = threading.Event()
# How often the leaving thread looks whether the work has been handed back.
POLL_SECONDS = 0.1
AFTER_TASK_SECONDS = 0.5


def requested() -> bool:
    """Whether this process was asked to stop: a training run checkpoints and gives its job back."""
    return _requested.is_set()


def give_back_held() -> None:
    """Recover every piece of work this process still holds, as the reaper would (a job from its newest
    checkpoint; see backend.work.reaper.hand_back), and send it to the next worker."""
    for held in lease.all_held():
        try:
            hand_back(held)
            log.warning("gave %s back to the queue on shutdown", held)
        except Exception as exc:  # lost meanwhile, or the database is away: the reaper recovers it after the lease
            log.warning("could not give %s back on shutdown: %s", held, exc)
        lease.release(held)


def _leave(grace: float) -> None:
    """Wait for a training run to hand its job back (checkpoint first) and its task to return, at most `grace`
    seconds; give back what is left; exit."""
    from workers import tasks

    deadline = time.monotonic() + grace
    while (lease.all_held() or tasks.training_job() is not None) and time.monotonic() < deadline:
        time.sleep(POLL_SECONDS)
    if not lease.all_held():
        time.sleep(AFTER_TASK_SECONDS)  # the task's return reaches Celery's main process: its message is acked
    give_back_held()
    logging.shutdown()
    os._exit(0)


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    if _requested.is_set():
        return
    _requested.set()
    from workers import tasks  # the module that runs training jobs (imported here: it imports this one)

    training = tasks.training_job() is not None
    grace = get_settings().shutdown_grace_seconds if training else 0.0
    log.warning("shutdown requested (signal %s): %s", signum, "checkpointing the job" if training else "leaving")
    # A thread, not this handler: the interrupted code may hold a database connection (or SQLite's write lock)
    # that must be released before anything can be written.
    threading.Thread(target=_leave, args=(grace,), name="shutdown", daemon=True).start()


def install_in_child() -> None:
    """In a pool child, as each task starts: SIGTERM starts a graceful shutdown instead of ending the process at
    once. (Celery and billiard set their own handler in a child after its initializer has run, so this cannot
    be done once at the child's start.)"""
    if signal.getsignal(signal.SIGTERM) is not _on_sigterm:
        signal.signal(signal.SIGTERM, _on_sigterm)


_pool: Any = None


def remember_pool(consumer: Any) -> None:
    """In Celery's main process, once ready: the pool whose children a shutdown must reach."""
    global _pool
    _pool = getattr(consumer, "pool", None)


def forward_to_children() -> None:
    """In Celery's main process, on a warm shutdown: pass SIGTERM on to the pool children (see above)."""
    processes = getattr(getattr(_pool, "_pool", None), "_pool", None) or []
    for process in processes:
        pid = getattr(process, "pid", None)
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
