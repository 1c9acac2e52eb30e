"""The workers as they last reported themselves (workers.registry writes the rows), and what they can run."""

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from backend.config import get_settings
from backend.db import Job, User, Worker
from backend.errors import Invalid
from backend.job.lifecycle import db_now
from backend.queue import QUEUE
from backend.worker.schemas import WorkerRead, WorkersLive

# What a worker's details say about its hardware and libraries, which every user may see; the rest (pid,
# python) is for admins.
SHARED_DETAILS = frozenset(
    (
        "gpu_count",
        "gpus",
        "cpu_count",
        "ram_bytes",
        "torch",
        "cuda_version",
        "bitsandbytes",
        "data_parallel_processes",
        "peak_matmul",
    )
)


def live_since(session: Session) -> datetime:
    """Workers seen after this are alive: the same window in which a job's lease would still hold."""
    return db_now(session) - timedelta(seconds=get_settings().lease_seconds)


@dataclass(frozen=True)
class Viewer:
    """Who is looking at the workers (plain values: a stream reads long after the request's session closed)."""

    user_id: int
    is_admin: bool

    @classmethod
    def of(cls, user: User) -> "Viewer":
        return cls(user_id=user.id, is_admin=user.is_admin)


def alias(name: str, queue: str) -> str:
    """A stable name for a worker that says nothing of its machine: Celery node names hold the host and the pid
    (worker-1234@gpu-box), so other users see the queue and a digest of the name instead."""
    return f"{queue}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"


def _as_seen_by(worker: WorkerRead, viewer: Viewer, own_jobs: set[int]) -> WorkerRead:
    """An admin sees every column. Anyone else shares the workers, not the other users' work: another user's job
    id is hidden, and so is what locates the machine's processes (hostname, pid, interpreter)."""
    if viewer.is_admin:
        return worker
    return worker.model_copy(
        update={
            "name": alias(worker.name, worker.queue),
            "hostname": None,
            "details": {k: v for k, v in worker.details.items() if k in SHARED_DETAILS},
            "current_job_id": worker.current_job_id if worker.current_job_id in own_jobs else None,
        }
    )


def list_workers(session: Session, viewer: Viewer) -> list[WorkerRead]:
    """Every registered worker, training ones first, each marked live or not, as `viewer` may see it."""
    since = live_since(session)
    rows = list(session.scalars(select(Worker).order_by(Worker.queue, Worker.name)))
    running = {w.current_job_id for w in rows if w.current_job_id is not None}
    own = (
        set()
        if viewer.is_admin or not running  # an admin sees every job; an idle fleet runs none
        else set(session.scalars(select(Job.id).where(Job.id.in_(running), Job.owner_id == viewer.user_id)))
    )
    seen = [
        WorkerRead.model_validate(w).model_copy(
            update={"live": w.last_seen_at >= since, "busy": w.current_job_id is not None}
        )
        for w in rows
    ]
    return [_as_seen_by(w, viewer, own) for w in seen]


def queue_depth(session: Session) -> int:
    """Jobs waiting for a training worker (every user's: they share the workers)."""
    return session.scalar(select(func.count()).select_from(Job).where(Job.status == "queued")) or 0


def live_state(session: Session, viewer: Viewer) -> WorkersLive:
    """The workers and the queue depth, with the database's clock (pages count "seen x s ago" from it)."""
    return WorkersLive(items=list_workers(session, viewer), queued=queue_depth(session), now=db_now(session))


def live_workers(session: Session, queue: str) -> list[Worker]:
    """Workers consuming `queue` seen within the liveness window."""
    since = live_since(session)
    return list(
        session.scalars(select(Worker).where(Worker.queue == queue, Worker.last_seen_at >= since).order_by(Worker.name))
    )


def live_training_workers(session: Session) -> list[Worker]:
    """Training workers (queue studio) seen within the liveness window."""
    return live_workers(session, QUEUE)


def can_run_qlora(worker: Worker) -> bool:
    return worker.cuda and bool((worker.details or {}).get("bitsandbytes"))


def require_qlora_worker(session: Session) -> None:
    """Refuse a qlora job unless a live training worker has CUDA and bitsandbytes (4-bit weights need both)."""
    live = live_training_workers(session)
    if any(can_run_qlora(w) for w in live):
        return
    if not live:
        seen = f"none seen in the last {get_settings().lease_seconds} s"
        raise Invalid(
            f"qlora needs a CUDA worker with bitsandbytes, and no training worker is live ({seen}), so none "
            "can be vouched for; start one (`studio worker`), or use lora",
            field="method",
        )
    listed = "; ".join(f"{w.name}: {w.device}{'' if not w.cuda else ', no bitsandbytes'}" for w in live)
    raise Invalid(
        f"qlora needs a CUDA worker with bitsandbytes; the live training workers are: {listed}. Use lora",
        field="method",
    )
