"""A job's life as the worker drives it: claim, heartbeat, metrics, events, artifacts, end.

The database is the source of truth for state, leases and claims (the broker may deliver a task twice, or
lose it). Functions without a `session` argument commit on their own and then publish a live update.
"""

import functools
import hashlib
import os
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, ParamSpec

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from backend.config import get_settings
from backend.db import Artifact, Job, JobEvent, JobMetric, JobSample, session_scope, utcnow
from backend.events import publish

P = ParamSpec("P")
# Set by workers.distributed in each process of a data-parallel run (torchrun's RANK; this module stays torch-free).
RANK_ENV = "STUDIO_DATA_PARALLEL_RANK"


def main_rank_only(writer: Callable[P, None]) -> Callable[P, None]:
    """Every rank of a data-parallel run executes the recipe; only rank 0 writes the job's rows."""

    @functools.wraps(writer)
    def guarded(*args: P.args, **kwargs: P.kwargs) -> None:
        if os.environ.get(RANK_ENV, "0") == "0":
            writer(*args, **kwargs)

    return guarded


def add_event(session: Session, job_id: int, message: str, level: str = "info") -> None:
    # Lock the job row first: API and worker both write events, and ids must commit in order, or an SSE
    # cursor could step past a row that commits late (no-op on SQLite, which serializes writers anyway).
    session.execute(select(Job.id).where(Job.id == job_id).with_for_update())
    session.add(JobEvent(job_id=job_id, level=level, message=message))


def db_now(session: Session) -> datetime:
    """The database's clock on PostgreSQL (leases compare times written by different machines)."""
    if session.get_bind().dialect.name == "postgresql":
        now = session.scalar(select(func.now()))
        assert now is not None
        return now
    return utcnow()


@main_rank_only
def log_event(job_id: int, message: str, level: str = "info") -> None:
    """Append a line to the job's events log (committed and published)."""
    with session_scope() as s:
        add_event(s, job_id, message, level)
    publish(job_id)


def claim_job(job_id: int, worker: str) -> bool:
    """Atomically move a queued job to running for `worker`. False means another delivery got it first."""
    with session_scope() as s:
        now = db_now(s)
        res = s.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == "queued", Job.cancel_requested.is_(False))
            # start_step: a resumed job continues its step count; the ETA measures this attempt's pace from here.
            .values(status="running", worker=worker, started_at=now, heartbeat_at=now, start_step=Job.current_step)
            .execution_options(synchronize_session=False)
        )
        claimed = res.rowcount == 1  # type: ignore[attr-defined]
        if claimed:
            add_event(s, job_id, f"started on {worker}")
    if claimed:
        publish(job_id)
    return claimed


def heartbeat(job_id: int, *, step: int, total_steps: int | None) -> bool:
    """Renew the lease and record progress. True means stop: a cancel was requested, or the job is no
    longer running (e.g. the reaper failed it after a long stall), so this worker no longer owns it."""
    return beat(job_id, step=step, total_steps=total_steps) == "stop"


def beat(job_id: int, *, step: int, total_steps: int | None) -> str:
    """Renew the lease and record progress; say what the worker should do: "run", "pause" or "stop"."""
    with session_scope() as s:
        s.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == "running")
            .values(heartbeat_at=db_now(s), current_step=step, total_steps=total_steps)
            .execution_options(synchronize_session=False)
        )
        row = s.execute(select(Job.status, Job.cancel_requested, Job.pause_requested).where(Job.id == job_id)).one()
    publish(job_id)
    if row.status != "running" or row.cancel_requested:
        return "stop"  # a cancel wins over a pause asked for at the same time
    return "pause" if row.pause_requested else "run"


def renew_lease(job_id: int) -> None:
    """Extend the worker's lease on a running job (the background heartbeat; progress is not touched)."""
    with session_scope() as s:
        s.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == "running")
            .values(heartbeat_at=db_now(s))
            .execution_options(synchronize_session=False)
        )


@main_rank_only
def update_job(job_id: int, **values: Any) -> None:
    with session_scope() as s:
        s.execute(update(Job).where(Job.id == job_id).values(**values).execution_options(synchronize_session=False))
    publish(job_id)


@main_rank_only
def record_metrics(job_id: int, step: int, values: dict[str, float]) -> None:
    """Store one logged point (durable first), then publish it."""
    with session_scope() as s:
        s.add(JobMetric(job_id=job_id, step=step, values=values))
    publish(job_id)


def last_metric_step(job_id: int) -> int:
    """The highest step with a stored metric (0 if none): a resumed run logs only the steps after it."""
    with session_scope() as s:
        return s.scalar(select(func.max(JobMetric.step)).where(JobMetric.job_id == job_id)) or 0


@main_rank_only
def record_samples(job_id: int, step: int, answers: list[tuple[str, str]]) -> None:
    """Store the watch prompts' (prompt, output) answers at one eval step, then publish."""
    with session_scope() as s:
        s.add_all(JobSample(job_id=job_id, step=step, prompt=p, output=o) for p, o in answers)
    publish(job_id)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@main_rank_only
def add_artifact(job_id: int, path: Path) -> None:
    """Register a finished file under the job; its name is the file name (e.g. adapter.zip)."""
    sha256 = file_sha256(path)
    with session_scope() as s:
        job = s.get(Job, job_id)
        assert job is not None
        s.add(
            Artifact(
                job_id=job_id,
                owner_id=job.owner_id,
                name=path.name,
                path=str(path),
                size_bytes=path.stat().st_size,
                sha256=sha256,
            )
        )
        add_event(s, job_id, f"artifact {path.name} ready ({path.stat().st_size / 1e6:.1f} MB)")
    publish(job_id)


def finish_job(
    job_id: int, status: str, *, error: str | None = None, message: str | None = None, **values: Any
) -> None:
    """Record the end of a running job (or its pause); `message` goes to the events log (at error level when it
    failed); `values` are further columns (resume_checkpoint).

    Only a job still `running` changes: one the reaper already failed keeps its status."""
    with session_scope() as s:
        res = s.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == "running")
            .values(status=status, finished_at=utcnow(), error=error, pause_requested=False, **values)
            .execution_options(synchronize_session=False)
        )
        if res.rowcount == 1:  # type: ignore[attr-defined]
            add_event(s, job_id, message or f"job {status}", "error" if status == "failed" else "info")
        else:
            add_event(s, job_id, f"worker ended as {status} after losing the job; status left unchanged", "warning")
    publish(job_id)


def reap_stale_jobs() -> list[int]:
    """Fail running jobs whose worker stopped beating (killed, lost power): the broker may never redeliver."""
    with session_scope() as s:
        cutoff = db_now(s) - timedelta(seconds=get_settings().lease_seconds)
        stale = list(s.scalars(select(Job.id).where(Job.status == "running", Job.heartbeat_at < cutoff)))
        for job_id in stale:
            s.execute(
                update(Job)
                .where(Job.id == job_id, Job.status == "running")
                .values(status="failed", finished_at=utcnow(), error="worker lost (no heartbeat)")
                .execution_options(synchronize_session=False)
            )
            add_event(s, job_id, "worker stopped responding; job marked failed", "error")
    for job_id in stale:
        publish(job_id)
    return stale
