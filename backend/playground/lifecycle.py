"""The worker's side of a generation: claim the row, read what to load, append output, record the end.

Each function opens and commits its own short session, and publishes a wake-up after writing, so SSE
clients read the new output from the database at once (or at their next poll in embedded mode).
"""

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import select, update

from backend.db import Generation, Job, Model, session_scope, utcnow
from backend.events import publish_generation
from backend.job.lifecycle import db_now
from backend.playground.service import Target, job_target, model_target


@dataclass(frozen=True)
class GenerationSpec:
    """One claimed generation: the prompt, its settings and the weights that answer it."""

    generation_id: int
    prompt: str
    params: dict[str, Any]
    target: Target


def claim_generation(generation_id: int) -> bool:
    """queued → running, atomically: a second delivery of the task finds nothing to claim."""
    with session_scope() as s:
        claimed = s.execute(
            update(Generation)
            .where(Generation.id == generation_id, Generation.status == "queued")
            .values(status="running")
            .execution_options(synchronize_session=False)
        )
        won = claimed.rowcount == 1  # type: ignore[attr-defined]
    if won:
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


def append_output(generation_id: int, text: str) -> None:
    """Append `text` to the stored answer (in SQL, so no read-modify-write) and wake the streams."""
    if not text:
        return
    with session_scope() as s:
        s.execute(
            update(Generation)
            .where(Generation.id == generation_id)
            .values(output=Generation.output + text)
            .execution_options(synchronize_session=False)
        )
    publish_generation(generation_id)


def finish_generation(generation_id: int, *, error: str | None = None) -> None:
    """running → done, or failed with `error`."""
    with session_scope() as s:
        s.execute(
            update(Generation)
            .where(Generation.id == generation_id)
            .values(status="failed" if error else "done", error=error, finished_at=utcnow())
            .execution_options(synchronize_session=False)
        )
    publish_generation(generation_id)


# A generation is at most 1024 tokens: one still "running" after this long lost its worker (killed, restarted).
STALE_AFTER = timedelta(minutes=30)


def reap_stale_generations() -> list[int]:
    """Fail generations whose worker went away mid-answer, so their columns stop waiting; return their ids."""
    with session_scope() as s:
        cutoff = db_now(s) - STALE_AFTER
        ids = list(
            s.scalars(select(Generation.id).where(Generation.status == "running", Generation.created_at < cutoff))
        )
        if ids:
            s.execute(
                update(Generation)
                .where(Generation.id.in_(ids), Generation.status == "running")
                .values(status="failed", error="the worker stopped before finishing this answer", finished_at=utcnow())
                .execution_options(synchronize_session=False)
            )
    for generation_id in ids:
        publish_generation(generation_id)
    return ids
