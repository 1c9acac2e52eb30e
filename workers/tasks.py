"""Thin Celery tasks: claim the job in the database, run its recipe, record how it ended."""

import logging
import threading
import traceback

from celery import shared_task

from backend.job.checkpoints import latest_checkpoint
from backend.job.lifecycle import claim_job, finish_job, give_back_job, log_event, update_job
from backend.observability.logs import job_logging
from backend.queue import RUN_JOB
from backend.work.heartbeat import heartbeat
from backend.work.kinds import JOB
from backend.work.lease import Lease, LeaseLost
from backend.work.retry import outbox
from backend.work.send import send
from workers import observability, registry, shutdown
from workers.claims import take
from workers.context import JobContext, job_workspace, load_context
from workers.distributed import RankFailed, run_data_parallel
from workers.metrics import Cancelled, Diverged, Paused, ShuttingDown
from workers.preflight import PreflightFailed
from workers.ranks import data_parallel_processes
from workers.recipes import recipe_for
from workers.training import device_description, release_memory

log = logging.getLogger(__name__)

TRACEBACK_LINES = 15


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


_training: list[int] = []  # the job this process trains now (at most one)


def training_job() -> int | None:
    """The job this process is training, if any (a shutdown gives it a chance to checkpoint first)."""
    return _training[0] if _training else None


def give_back(job_id: int, why: str) -> str:
    """Put the job back in the queue from its newest checkpoint, for any worker to resume (this one is leaving)."""
    checkpoint = latest_checkpoint(job_id)
    where = f"{checkpoint.name} saved; " if checkpoint else "no checkpoint yet; "
    message = f"{why}: {where}the job is back in the queue to resume on any worker"
    if give_back_job(job_id, message, resume_checkpoint=checkpoint.key if checkpoint else None):
        send(JOB, job_id, avoid=registry.worker_name())  # not to this worker: it is leaving
        return "requeued"
    return "lost"


def lost(job_id: int, lease_gone: threading.Event, exc: BaseException) -> bool:
    """Whether the run ended because this worker lost the job to another attempt (nothing left to record)."""
    if isinstance(exc, LeaseLost) or lease_gone.is_set():
        return True
    return isinstance(exc, RankFailed) and exc.error_type == LeaseLost.__name__


# A shared task binds to the app that loads this module (workers.main), so importing it reads no settings.
@shared_task(name=RUN_JOB)
def run_job(job_id: int) -> str:
    """Run job `job_id` to its end; return its final status ("skipped" when another delivery owns it, "requeued"
    when this worker shut down and gave it back, "lost" when another attempt took it over).

    Never raises for a training error: the job is marked failed and the worker goes on to the next task.
    """
    with job_logging(job_id):  # every line logged while the job runs carries its id (STUDIO_LOG_FORMAT=json)
        outcome = _claim_and_run(job_id)
    observability.job_ended(outcome)
    return outcome


def _claim_and_run(job_id: int) -> str:
    won = take(JOB, job_id, claim_job)
    if won is None:
        return "skipped"
    registry.set_current_job(job_id)
    _training.append(job_id)
    try:
        # The workspace ends before the heartbeat: the job's end is recorded first, then its work folder goes.
        with heartbeat(won) as lease_gone, observability.training(job_id), job_workspace(job_id):
            return _run(won, lease_gone)
    finally:
        _training.clear()
        outbox.clear()
        release_memory()
        registry.set_current_job(None)


def _run(won: Lease, lease_gone: threading.Event) -> str:
    job_id = won.id
    try:
        run_recipe(load_context(job_id))
    except Cancelled:
        finish_job(job_id, "cancelled")
        return "cancelled"
    except Paused as exc:
        checkpoint = latest_checkpoint(job_id)
        where = f"; resume continues from {checkpoint.name}" if checkpoint else ""
        resume = checkpoint.key if checkpoint else None
        finish_job(
            job_id, "paused", message=f"{exc}{where}".replace(": saving a checkpoint", ""), resume_checkpoint=resume
        )
        return "paused"
    except ShuttingDown as exc:
        return give_back(job_id, str(exc))
    except Diverged as exc:
        observability.FAILURES.labels(kind="diverged").inc()
        finish_job(job_id, "failed", error=str(exc), message=f"failed: diverged: {exc}")
        return "failed"
    except PreflightFailed as exc:
        # The data, not the code: the reasons are already in the events log, no traceback helps.
        observability.FAILURES.labels(kind="preflight").inc()
        finish_job(job_id, "failed", error=str(exc), message="failed before the first step: the pre-flight check")
        return "failed"
    except Exception as exc:
        if lost(job_id, lease_gone, exc):
            log.warning("job %s: this worker lost the job to another attempt (%s); stopping", job_id, exc)
            return "lost"
        if shutdown.requested():  # the shutdown broke the run (a data-parallel process killed): not its fault
            return give_back(job_id, f"worker {won.worker} shutting down")
        log.exception("job %s failed", job_id)
        error_type, tail = failure(exc)
        observability.FAILURES.labels(kind=error_type).inc()
        log_event(job_id, tail.rstrip(), "error")
        finish_job(job_id, "failed", error=str(exc), message=f"failed: {error_type}: {exc}")
        return "failed"
    finish_job(job_id, "succeeded")
    return "succeeded"
