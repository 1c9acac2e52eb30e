"""The workers as they last reported themselves (workers.registry writes the rows), and what they can run."""

from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from backend.config import get_settings
from backend.db import Job, Worker
from backend.errors import Invalid
from backend.job.lifecycle import db_now
from backend.queue import QUEUE
from backend.worker.schemas import WorkerRead, WorkersLive


def live_since(session: Session) -> datetime:
    """Workers seen after this are alive: the same window in which a job's lease would still hold."""
    return db_now(session) - timedelta(seconds=get_settings().lease_seconds)


def list_workers(session: Session) -> list[WorkerRead]:
    """Every registered worker, training ones first, each marked live or not."""
    since = live_since(session)
    rows = session.scalars(select(Worker).order_by(Worker.queue, Worker.name))
    return [WorkerRead.model_validate(w).model_copy(update={"live": w.last_seen_at >= since}) for w in rows]


def queue_depth(session: Session) -> int:
    """Jobs waiting for a training worker (every user's: they share the workers)."""
    return session.scalar(select(func.count()).select_from(Job).where(Job.status == "queued")) or 0


def live_state(session: Session) -> WorkersLive:
    """The workers and the queue depth, with the database's clock (pages count "seen x s ago" from it)."""
    return WorkersLive(items=list_workers(session), queued=queue_depth(session), now=db_now(session))


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
