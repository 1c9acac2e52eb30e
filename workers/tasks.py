"""Thin Celery tasks: claim the job in the database, run its recipe, record how it ended."""

import logging
import os
import socket
import threading
import traceback
from collections.abc import Iterator
from contextlib import contextmanager

from celery import shared_task

from backend.config import get_settings
from backend.job.checkpoints import latest_checkpoint
from backend.job.lifecycle import claim_job, finish_job, log_event, renew_lease, update_job
from backend.queue import RUN_JOB
from workers import registry
from workers.context import JobContext, load_context
from workers.distributed import RankFailed, run_data_parallel
from workers.metrics import Cancelled, Diverged, Paused
from workers.ranks import data_parallel_processes
from workers.recipes import recipe_for
from workers.training import device_description, release_memory

log = logging.getLogger(__name__)

TRACEBACK_LINES = 15


def worker_name() -> str:
    return get_settings().worker_name or registry.registered_name() or f"{socket.gethostname()}:{os.getpid()}"


@contextmanager
def keep_lease(job_id: int) -> Iterator[None]:
    """Renew the job's lease from a thread, so a long silent stage (tokenizer training, loading a big model)
    is not mistaken for a dead worker by the API's reaper."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(get_settings().heartbeat_seconds):
            try:
                renew_lease(job_id)
            except Exception as exc:  # a missed beat is retried; the lease is minutes long
                log.warning("lease renewal for job %s failed: %s", job_id, exc)

    thread = threading.Thread(target=beat, name=f"lease-{job_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def run_recipe(ctx: JobContext) -> None:
    """Train in this process, or in one process per device (data parallel) when the worker has several."""
    processes = data_parallel_processes()
    device = device_description()
    update_job(ctx.job_id, device=f"{processes} x {device}, data parallel" if processes > 1 else device)
    if processes > 1:
        run_data_parallel(ctx, processes)
    else:
        recipe_for(ctx)(ctx)


def failure(exc: Exception) -> tuple[str, str]:
    """(error type, traceback tail) of a failed run: a data-parallel rank's own, not the launcher's."""
    if isinstance(exc, RankFailed):
        return exc.error_type, exc.tail
    return type(exc).__name__, "".join(traceback.format_exc().splitlines(keepends=True)[-TRACEBACK_LINES:])


# A shared task binds to the app that loads this module (workers.main), so importing it reads no settings.
@shared_task(name=RUN_JOB)
def run_job(job_id: int) -> str:
    """Run job `job_id` to its end; return its final status ("skipped" when another delivery owns it).

    Never raises for a training error: the job is marked failed and the worker goes on to the next task.
    """
    worker = worker_name()
    if not claim_job(job_id, worker):
        # Celery may deliver a task twice (acks_late, redelivery); the database claim decides who runs it.
        log.info("job %s is not queued (already claimed, finished or cancelled); skipping", job_id)
        return "skipped"
    registry.set_current_job(job_id)
    try:
        with keep_lease(job_id):
            run_recipe(load_context(job_id))
    except Cancelled:
        finish_job(job_id, "cancelled")
        return "cancelled"
    except Paused as exc:
        checkpoint = latest_checkpoint(job_id)
        where = f"; resume continues from {checkpoint.name}" if checkpoint else ""
        resume = str(checkpoint.path) if checkpoint else None
        finish_job(
            job_id, "paused", message=f"{exc}{where}".replace(": saving a checkpoint", ""), resume_checkpoint=resume
        )
        return "paused"
    except Diverged as exc:
        finish_job(job_id, "failed", error=str(exc), message=f"failed: diverged: {exc}")
        return "failed"
    except Exception as exc:
        log.exception("job %s failed", job_id)
        error_type, tail = failure(exc)
        log_event(job_id, tail.rstrip(), "error")
        finish_job(job_id, "failed", error=str(exc), message=f"failed: {error_type}: {exc}")
        return "failed"
    finally:
        release_memory()
        registry.set_current_job(None)
    finish_job(job_id, "succeeded")
    return "succeeded"
