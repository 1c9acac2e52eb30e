"""Placement: which live training worker a queued job goes to, or why it waits.

Each training worker consumes a Celery queue of its own (`backend.queue.worker_queue`). A job is sent only to a free
worker it fits: its method's needs (qlora: CUDA and bitsandbytes) and its memory estimate (recorded on the job at
admission, for a CUDA and for a CPU worker) within 90% of the worker's device memory, as the estimate judges it, and the
disk its checkpoints and weights take within the worker's free disk. Queued jobs are placed highest priority first, then
oldest, each on the free fitting worker that wastes least (CUDA first, then the smallest memory that holds it), so a big
machine stays free for the jobs only it can run. A job that cannot be placed stays queued with `waiting_reason` set and
no `sent_at`, so the next placement (a job sent, a worker registering or finishing, the reaper's sweep) considers it
again.

The database stays the source of truth: this module only decides and records; `backend.work.send` sends after
the commit, and a worker's claim still decides whether a delivery runs (`refusal` turns away a stale one).
"""

from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from backend.config import get_settings
from backend.db import Job, User, Worker
from backend.job.lifecycle import add_event, db_now
from backend.method import registry
from backend.queue import worker_queue
from backend.work.kinds import JOB
from backend.worker.service import can_run_qlora, live_training_workers

# The share of a worker's memory a job may plan on (the runtime and fragmentation take the rest), as the estimate.
MEMORY_SHARE = 0.9
GIB = 1024**3


@dataclass(frozen=True)
class Placed:
    """What placement decided for one queued job: the queue it goes to, or why it waits (`queue` None)."""

    job_id: int
    queue: str | None
    reason: str | None
    changed: bool  # its waiting reason changed (live pages should hear of it)


def _gib(n: int) -> str:
    return f"{n / GIB:,.1f} GiB"


def unfit(worker: Worker, job: Job) -> str | None:
    """Why `job` cannot run on `worker`, or None when it fits."""
    method = registry.method(job.method)
    if method.requires == "cuda_bitsandbytes" and not can_run_qlora(worker):
        return f"{method.name} needs CUDA and bitsandbytes, {worker.device} lacks them"
    need = (job.needs or {}).get("memory_cuda" if worker.cuda else "memory_cpu")
    # A worker that reported no memory (0), or a job admitted without a memory verdict, is not judged on memory.
    if need and worker.device_memory_bytes and need > worker.device_memory_bytes * MEMORY_SHARE:
        return f"it needs about {_gib(need)}, {worker.device} has {_gib(worker.device_memory_bytes)}"
    disk = (job.needs or {}).get("disk")
    if disk and worker.disk_free_bytes is not None and disk > worker.disk_free_bytes:
        free = _gib(worker.disk_free_bytes)
        return f"its checkpoints and weights take about {_gib(disk)} of disk, {worker.name} has {free} free"
    return None


def _preference(worker: Worker) -> tuple[bool, int]:
    return (not worker.cuda, worker.device_memory_bytes or 0)


def running_by_owner(session: Session) -> Counter[int]:
    """How many training jobs each user has running now."""
    rows = session.execute(select(Job.owner_id, func.count()).where(Job.status == "running").group_by(Job.owner_id))
    return Counter({owner: count for owner, count in rows.tuples()})


def over_limit(running: int) -> str | None:
    """Why a user with `running` jobs running may not start another (STUDIO_MAX_RUNNING_JOBS_PER_USER)."""
    limit = get_settings().max_running_jobs_per_user
    if limit and running >= limit:
        return f"{running} of its owner's jobs are running, the most STUDIO_MAX_RUNNING_JOBS_PER_USER={limit} allows"
    return None


def disabled_owners(session: Session, owners: Collection[int]) -> set[int]:
    """Which of `owners` have a disabled account: their queued jobs wait (running ones finish) until enabled."""
    rows = select(User.id).where(User.id.in_(list(owners)), User.disabled_at.is_not(None))
    return set(session.scalars(rows))


DISABLED = "its owner's account is disabled; it starts once an administrator enables it again"


def _awaited(session: Session, since: datetime, *, besides: Collection[int]) -> set[str]:
    """Workers sent a job (other than those being placed again now) since `since` that they have not claimed
    yet: idle in the registry, but taken."""
    sent = select(Job.placed_on).where(
        JOB.is_queued(), Job.sent_at >= since, Job.placed_on.is_not(None), Job.id.not_in(list(besides))
    )
    return {name for name in session.scalars(sent) if name is not None}


def why_waiting(job: Job, workers: list[Worker], free: list[Worker]) -> str:
    """Why no free worker takes `job` now."""
    if not workers:
        return "no training worker is live; it starts when one is (`studio worker`)"
    reasons = {unfit(w, job) for w in workers}
    if None in reasons:
        busy = sum(1 for w in workers if unfit(w, job) is None and w not in free)
        return f"every live training worker it fits is busy ({busy}); it starts when one is free"
    return "no live training worker fits it: " + "; ".join(sorted(r for r in reasons if r))


def route(
    session: Session, *, after: timedelta, include: Collection[int] = (), avoid: str | None = None
) -> list[Placed]:
    """Place the queued jobs that wait for a worker: those never sent or sent more than `after` ago without being
    claimed, and `include`. Highest priority first, then oldest; a worker takes one job per pass; `avoid` (a
    worker leaving, or one that refused the job) takes none. The caller commits, then sends."""
    now = db_now(session)
    waiting = or_(Job.sent_at.is_(None), Job.sent_at < now - after, Job.id.in_(list(include)))
    jobs = list(
        session.scalars(
            select(Job).where(JOB.is_queued(), waiting).order_by(Job.priority.desc(), Job.id).with_for_update()
        )
    )
    if not jobs:
        return []
    workers = [w for w in live_training_workers(session) if w.name != avoid]
    taken = _awaited(session, now - after, besides=[job.id for job in jobs])
    free = sorted((w for w in workers if w.current_job_id is None and w.name not in taken), key=_preference)
    running = running_by_owner(session)
    disabled = disabled_owners(session, {job.owner_id for job in jobs})
    out = []
    for job in jobs:
        target = next((w for w in free if unfit(w, job) is None), None)
        held = DISABLED if job.owner_id in disabled else over_limit(running[job.owner_id])
        reason = held or (None if target else why_waiting(job, workers, free))
        changed = reason != job.waiting_reason
        if reason is None and target is not None:
            free.remove(target)
            running[job.owner_id] += 1
            job.sent_at, job.waiting_reason, job.placed_on = now, None, target.name
            out.append(Placed(job.id, worker_queue(target.name), None, changed))
            continue
        # The reason is a field the job page shows live, not a log line: it may change at every sweep.
        # No sent_at: the next placement considers it at once, whatever STUDIO_REDELIVER_SECONDS says.
        job.sent_at, job.waiting_reason = None, reason
        out.append(Placed(job.id, None, reason, changed))
    session.flush()
    return out


def placed_elsewhere(session: Session, job_id: int, worker_name: str) -> str | None:
    """The worker a queued job is placed on now, when that is not `worker_name`: this delivery is a stale copy
    (the job was placed again since, on another worker whose queue holds the live message), and claiming it would
    let it overtake the jobs placement ranked before it. None when this worker may claim it."""
    job = session.get(Job, job_id)
    if job is None or job.status != JOB.queued or job.placed_on in (None, worker_name):
        return None
    return job.placed_on


def refusal(session: Session, job_id: int, worker_name: str) -> str | None:
    """Why worker `worker_name` must not claim queued job `job_id` (a stale routing: the worker changed, or the
    owner reached the per-user limit meanwhile), or None. A worker not in the registry is not judged."""
    job = session.get(Job, job_id)
    worker = session.get(Worker, worker_name)
    if job is None or worker is None or job.status != JOB.queued:
        return None  # not waiting (the claim finds so too), or a worker not in the registry: nothing to judge
    if disabled_owners(session, [job.owner_id]):
        return DISABLED
    running = session.scalar(
        select(func.count()).where(Job.owner_id == job.owner_id, Job.status == "running", Job.id != job_id)
    )
    return over_limit(running or 0) or unfit(worker, job)


def turn_away(session: Session, job_id: int, worker_name: str, reason: str) -> None:
    """Leave the job queued for another placement, saying (in its log) why this worker did not take it."""
    job = session.get(Job, job_id)
    if job is None or job.status != JOB.queued:
        return
    add_event(session, job_id, f"not taken by {worker_name}: {reason}")
    job.sent_at, job.waiting_reason = None, reason
