"""A worker row as `studio worker` writes it, so the reaper's sweep sees a live worker on a queue."""

from backend.db import Worker, session_scope, utcnow


def register_worker(queue: str, *, name: str = "w-test", job_id: int | None = None) -> None:
    """A live worker consuming `queue`, idle or running job `job_id`."""
    with session_scope() as s:
        now = utcnow()
        s.merge(Worker(name=name, queue=queue, current_job_id=job_id, started_at=now, last_seen_at=now))
