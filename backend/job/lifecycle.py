"""A job's life as the worker drives it: claim, heartbeat, metrics, events, artifacts, end.

The database is the source of truth for state, leases and claims (the broker may deliver a task twice, or
lose it): the lease, its attempt number and the recovery of expired ones are `backend.work`'s, as for every other
kind of background work. Functions without a `session` argument commit on their own and then publish a live
update. Each write is fenced by the lease this process holds on the job (if it holds one: an API process or a test
driving a recipe writes unfenced), so a worker whose lease was taken over is refused (`LeaseLost`) and stops.
Writes the run can go on without (metrics, events, answers) wait in memory through a database outage.
"""

import contextlib
import functools
import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, ParamSpec

from sqlalchemy import ColumnElement, and_, func, select, true, update
from sqlalchemy.orm import Session, aliased

from backend.config import get_settings
from backend.db import Artifact, Job, JobEvent, JobMetric, JobSample, User, session_scope, utcnow
from backend.events import publish
from backend.work import lease
from backend.work.kinds import JOB
from backend.work.lease import Lease, LeaseLost, db_now
from backend.work.retry import OutboxExpired, outbox, retrying, transient

P = ParamSpec("P")
# Set by workers.distributed in each process of a data-parallel run (torchrun's RANK; this module stays torch-free).
RANK_ENV = "STUDIO_DATA_PARALLEL_RANK"

__all__ = ["RANK_ENV", "Lease", "LeaseLost", "db_now"]


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


def _written(job_id: int, write: Callable[[Session], None]) -> Callable[[], None]:
    """`write` in a short transaction of its own, fenced by the lease this process holds on the job now (not when
    the outbox gets to it: the lease may be released by then), then published."""
    held = lease.held(JOB, job_id)

    def run() -> None:
        with session_scope() as s:
            if held is not None:
                lease.fence(s, held)
            write(s)
        publish(job_id)

    return run


@main_rank_only
def log_event(job_id: int, message: str, level: str = "info") -> None:
    """Append a line to the job's events log (committed and published)."""
    outbox.put(_written(job_id, lambda s: add_event(s, job_id, message, level)))


def claim_job(job_id: int, worker: str) -> Lease | None:
    """Atomically move a queued job to running for `worker`, taking the next attempt; None means another
    delivery got it first (or it was cancelled or has ended)."""

    def claim() -> Lease | None:
        with session_scope() as s:
            # start_step: a resumed job continues its step count; the ETA measures this attempt's pace from here.
            won = lease.claim(
                s, JOB, job_id, worker, where=and_(Job.cancel_requested.is_(False), _room_for_one_more(s, job_id)),
                worker=worker, started_at=db_now(s), start_step=Job.current_step, finished_at=None,
            )  # fmt: skip
            if won is not None:
                add_event(s, job_id, f"started on {worker} (attempt {won.attempt})")
            return won

    won = retrying(claim)
    if won is not None:
        publish(job_id)
    return won


def _room_for_one_more(session: Session, job_id: int) -> ColumnElement[bool]:
    """The claim's condition that the job's owner may start another job under STUDIO_MAX_RUNNING_JOBS_PER_USER.
    The count is part of the claim's UPDATE (atomic on SQLite, which writes one at a time), and PostgreSQL claims
    lock the owner's row first, so two workers claiming one owner's jobs at once count one after the other
    instead of both seeing room for one more."""
    limit = get_settings().max_running_jobs_per_user
    owner = session.scalar(select(Job.owner_id).where(Job.id == job_id)) if limit else None
    if owner is None:
        return true()
    # FOR NO KEY UPDATE: claimers take turns, while inserts that reference the user (its jobs, datasets) do not wait.
    session.execute(select(User.id).where(User.id == owner).with_for_update(key_share=True))
    other = aliased(Job)
    running = select(func.count()).select_from(other).where(other.owner_id == owner, other.status == JOB.running)
    return running.scalar_subquery() < limit


def heartbeat(job_id: int, *, step: int | None, total_steps: int | None) -> bool:
    """Renew the lease and record progress. True means stop: a cancel was requested, or the job is no
    longer running (cancelled, or taken back by the reaper: this worker no longer owns it)."""
    return beat(job_id, step=step, total_steps=total_steps) == "stop"


def beat(job_id: int, *, step: int | None, total_steps: int | None) -> str:
    """Renew the lease and record progress (none when `step` is None: before training starts, a resumed job
    is still at its checkpoint's step); say what the worker should do: "run", "pause" or "stop".

    Raises LeaseLost when another attempt owns the job now. While the database is unreachable the run goes on
    ("run"): the lease is minutes long, and the writes it makes meanwhile wait in the outbox."""
    held = lease.held(JOB, job_id)
    try:
        with session_scope() as s:
            progress = {"current_step": step, "total_steps": total_steps} if step is not None else {}
            if held is not None:
                lease.renew(s, held, **progress)
            else:
                s.execute(
                    update(Job)
                    .where(Job.id == job_id, Job.status == "running")
                    .values(heartbeat_at=db_now(s), **progress)
                    .execution_options(synchronize_session=False)
                )
            row = s.execute(select(Job.status, Job.cancel_requested, Job.pause_requested).where(Job.id == job_id)).one()
    except Exception as exc:
        if not transient(exc):
            raise
        if held is not None and lease.overdue(held):
            # The reaper may give the job to another worker any moment now: stop before two train it.
            raise LeaseLost(f"{held} could not renew its lease for {lease.unrenewed_for(held):.0f} s") from exc
        return "run"
    publish(job_id)
    if row.status != "running" or row.cancel_requested:
        return "stop"  # a cancel wins over a pause asked for at the same time
    return "pause" if row.pause_requested else "run"


def renew_lease(job_id: int) -> None:
    """Extend the worker's lease on a running job (the background heartbeat; progress is not touched)."""
    held = lease.held(JOB, job_id)
    with session_scope() as s:
        if held is not None:
            lease.renew(s, held)
        else:
            s.execute(
                update(Job)
                .where(Job.id == job_id, Job.status == "running")
                .values(heartbeat_at=db_now(s))
                .execution_options(synchronize_session=False)
            )


@main_rank_only
def update_job(job_id: int, **values: Any) -> None:
    def write(s: Session) -> None:
        s.execute(update(Job).where(Job.id == job_id).values(**values).execution_options(synchronize_session=False))

    outbox.put(_written(job_id, write))


@main_rank_only
def record_points(job_id: int, points: list[tuple[int, dict[str, float]]], **job_values: Any) -> None:
    """Store logged points (step, values) and set `job_values` on the job row in one transaction, then publish
    once: a trainer logging every few milliseconds writes once a second, not once a step."""

    def write(s: Session) -> None:
        s.add_all(JobMetric(job_id=job_id, step=step, values=values) for step, values in points)
        if job_values:
            s.execute(
                update(Job).where(Job.id == job_id).values(**job_values).execution_options(synchronize_session=False)
            )

    outbox.put(_written(job_id, write))


def last_metric_step(job_id: int) -> int:
    """The highest step with a stored metric (0 if none): a resumed run logs only the steps after it."""

    def read() -> int:
        with session_scope() as s:
            return s.scalar(select(func.max(JobMetric.step)).where(JobMetric.job_id == job_id)) or 0

    return retrying(read)


@main_rank_only
def record_samples(job_id: int, step: int, answers: list[tuple[str, str]]) -> None:
    """Store the watch prompts' (prompt, output) answers at one eval step, then publish."""

    def write(s: Session) -> None:
        s.add_all(JobSample(job_id=job_id, step=step, prompt=p, output=o) for p, o in answers)

    outbox.put(_written(job_id, write))


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@main_rank_only
def add_artifact(job_id: int, path: Path, key: str) -> None:
    """Register a finished file, stored under `key`, as the job's; its name is the file name (e.g. adapter.zip)."""
    sha256, size = file_sha256(path), path.stat().st_size

    def write(s: Session) -> None:
        job = s.get(Job, job_id)
        assert job is not None
        s.add(Artifact(job_id=job_id, owner_id=job.owner_id, name=path.name, path=key, size_bytes=size, sha256=sha256))
        add_event(s, job_id, f"artifact {path.name} ready ({size / 1e6:.1f} MB)")

    outbox.drain()  # the run's points and events first, in order
    retrying(_written(job_id, write))


def finish_job(
    job_id: int, status: str, *, error: str | None = None, message: str | None = None, **values: Any
) -> None:
    """Record the end of a running job (or its pause); `message` goes to the events log (at error level when it
    failed); `values` are further columns (resume_checkpoint).

    Only the attempt that owns the job changes it: one the reaper took back keeps its status (and the worker's
    late word goes to the events log only)."""
    held = lease.held(JOB, job_id)
    end = {"finished_at": utcnow(), "error": error, "pause_requested": False, **values}

    def write() -> None:
        with session_scope() as s:
            try:
                if held is not None:
                    lease.finish(s, held, status, **end)
                    ended = True
                else:
                    res = s.execute(
                        update(Job)
                        .where(Job.id == job_id, Job.status == "running")
                        .values(status=status, lease_worker=None, **end)
                        .execution_options(synchronize_session=False)
                    )
                    ended = res.rowcount == 1  # type: ignore[attr-defined]
            except LeaseLost:
                ended = False
            if ended:
                add_event(s, job_id, message or f"job {status}", "error" if status == "failed" else "info")
            else:
                add_event(s, job_id, f"worker ended as {status} after losing the job; status left unchanged", "warning")

    with contextlib.suppress(LeaseLost, OutboxExpired):
        outbox.drain()  # the run's points first; if they cannot be stored, the end still must be
    retrying(write)
    publish(job_id)


def give_back_job(job_id: int, message: str, *, resume_checkpoint: str | None) -> bool:
    """This worker is shutting down: the job goes back to the queue to resume from `resume_checkpoint` on any
    worker. False if the lease was no longer ours. The caller sends the task again."""
    held = lease.held(JOB, job_id)
    assert held is not None, "only a worker holding the job can give it back"

    def write() -> bool:
        with session_scope() as s:
            try:
                lease.give_back(s, held, resume_checkpoint=resume_checkpoint, pause_requested=False)
            except LeaseLost:
                return False
            add_event(s, job_id, message, "warning")
            return True

    outbox.drain()
    given = retrying(write)
    publish(job_id)
    return given
