"""The worker's side of a generation: claim the row, read what to load, append output, record the end.

The claim and the lease are `backend.work`'s. Each function opens and commits its own short session, fenced by
the lease this process holds, and publishes a wake-up after writing, so SSE clients read the new output from the
database at once (or at their next poll in embedded mode).
"""

from dataclasses import dataclass
from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session

from backend.db import Generation, Job, Model, session_scope, utcnow
from backend.events import publish_generation
from backend.playground.service import Target, job_target, model_target
from backend.work import lease
from backend.work.kinds import GENERATION
from backend.work.lease import Expired, Lease, LeaseLost


@dataclass(frozen=True)
class GenerationSpec:
    """One claimed generation: the prompt, its settings and the weights that answer it."""

    generation_id: int
    prompt: str
    params: dict[str, Any]
    target: Target


def claim_generation(generation_id: int, worker: str = "worker") -> Lease | None:
    """queued → running for `worker`, atomically: a second delivery of the task finds nothing to claim."""
    with session_scope() as s:
        won = lease.claim(s, GENERATION, generation_id, worker)
    if won is not None:
        publish_generation(generation_id)
    return won


def load_generation(generation_id: int) -> GenerationSpec:
    """Snapshot the generation and resolve its weights again (a job or model may have changed since)."""
    with session_scope() as s:
        row = s.get(Generation, generation_id)
        if row is None:
            raise LookupError(f"generation {generation_id} does not exist")
        if row.model_id is not None:
            model = s.get(Model, row.model_id)
            if model is None:
                raise LookupError(f"model {row.model_id} was deleted")
            target = model_target(model)
        else:
            job = s.get(Job, row.job_id)
            if job is None:
                raise LookupError(f"job {row.job_id} was deleted")
            target = job_target(s, job, row.checkpoint)
        return GenerationSpec(generation_id=row.id, prompt=row.prompt, params=dict(row.params), target=target)


def _running(s: Session, generation_id: int) -> Any:
    """The WHERE clause of a worker's write: the attempt this process holds (any row for a caller holding none)."""
    held = lease.held(GENERATION, generation_id)
    return held.owns() if held is not None else Generation.id == generation_id


def append_output(generation_id: int, text: str) -> None:
    """Append `text` to the stored answer (in SQL, so no read-modify-write) and wake the streams; LeaseLost when
    this worker no longer owns the generation."""
    if not text:
        return
    with session_scope() as s:
        res = s.execute(
            update(Generation)
            .where(_running(s, generation_id))
            .values(output=Generation.output + text, heartbeat_at=lease.db_now(s))
            .execution_options(synchronize_session=False)
        )
        if res.rowcount != 1:  # type: ignore[attr-defined]
            raise LeaseLost(f"generation {generation_id} is no longer this worker's")
    publish_generation(generation_id)


def record_usage(generation_id: int, usage: dict[str, int]) -> None:
    """Keep the prompt's and the answer's token counts in the row's params (the /v1 API's `usage`)."""
    with session_scope() as s:
        row = s.get(Generation, generation_id)
        if row is None:
            return
        s.execute(
            update(Generation)
            .where(_running(s, generation_id))
            .values(params={**(row.params or {}), "usage": usage})
            .execution_options(synchronize_session=False)
        )


def finish_generation(generation_id: int, *, error: str | None = None) -> None:
    """running → done, or failed with `error` (nothing changes if this worker no longer owns it)."""
    with session_scope() as s:
        s.execute(
            update(Generation)
            .where(_running(s, generation_id))
            .values(status="failed" if error else "done", error=error, finished_at=utcnow(), lease_worker=None)
            .execution_options(synchronize_session=False)
        )
    publish_generation(generation_id)


def recover_generation(session: Session, row: Expired, max_attempts: int) -> bool:
    """The worker of a running generation was lost: it fails, since its half-streamed answer cannot be taken
    back from the readers who saw it (asking again is one click)."""
    error = f"the worker ({row.lease_worker}) stopped before finishing this answer"
    lease.give_up(session, GENERATION, row, error=error, finished_at=utcnow())
    return False
