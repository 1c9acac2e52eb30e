"""Pause, resume and clone: a job's life after its first run, as the web app drives it.

Every state change is a conditional UPDATE on the job's status, because the worker writes the same row: a
pause that races the job's end must not revive it, a double-clicked resume must not queue it twice.
"""

from typing import Any

from pydantic import ValidationError
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from backend.db import Job, JobMetric, JobSample, User, metric_rollup
from backend.errors import Conflict, Invalid
from backend.job.checkpoints import (
    Checkpoint,
    latest_checkpoint,
    list_checkpoints,
    named_checkpoint,
    remove_checkpoints_after,
)
from backend.job.lifecycle import add_event
from backend.job.schemas import JobClone, JobCreate
from backend.job.service import create_job, get_job
from backend.method import registry
from backend.work import lease
from backend.work.kinds import JOB

RESUMABLE = ("paused", "failed", "cancelled")


def _changed(session: Session, job_id: int, where: Any, **values: Any) -> bool:
    res = session.execute(
        update(Job).where(Job.id == job_id, where).values(**values).execution_options(synchronize_session=False)
    )
    return res.rowcount == 1  # type: ignore[attr-defined]


def pause_job(session: Session, *, user: User, job_id: int) -> Job:
    """Ask a running job to save a checkpoint and stop; it ends as `paused`, ready to resume."""
    job = get_job(session, user=user, job_id=job_id)
    running = (Job.status == "running") & Job.cancel_requested.is_(False) & Job.pause_requested.is_(False)
    if _changed(session, job.id, running, pause_requested=True):
        add_event(session, job.id, "pause requested; saving a checkpoint at the next step")
    elif job.status != "running":
        raise Conflict(f"job {job.id} is {job.status}; only a running job can be paused")
    session.refresh(job)
    return job


def _checkpoint(job: Job, name: str | None) -> Checkpoint:
    if name is None:
        checkpoint = latest_checkpoint(job.id)
        if checkpoint is None:
            raise Conflict(f"job {job.id} has no checkpoint to resume from; clone it to start over")
        return checkpoint
    checkpoint = named_checkpoint(job.id, name)
    if checkpoint is None:
        names = ", ".join(c.name for c in list_checkpoints(job.id)) or "none"
        raise Invalid(f"checkpoint: job {job.id} has no checkpoint {name!r} (it has: {names})", field="checkpoint")
    return checkpoint


def drop_after(session: Session, job: Job, step: int) -> str | None:
    """Forget what the run did after `step`: the resumed run logs those steps again, and a curve must hold one
    value per step (the worker plots only steps after the last stored one). Says what was dropped."""
    metrics = session.execute(delete(JobMetric).where(JobMetric.job_id == job.id, JobMetric.step > step))
    metric_rollup.truncate_after(session.connection(), job.id, step)  # the charts' buckets past it go too
    samples = session.execute(delete(JobSample).where(JobSample.job_id == job.id, JobSample.step > step))
    removed = remove_checkpoints_after(job.id, step)
    n_metrics, n_samples = metrics.rowcount, samples.rowcount  # type: ignore[attr-defined]
    if not (n_metrics or n_samples or removed):
        return None
    # The final losses must describe the weights the run continues from, not the abandoned steps.
    kept = session.scalars(select(JobMetric).where(JobMetric.job_id == job.id).order_by(JobMetric.step)).all()
    job.final_loss = next((m.values["loss"] for m in reversed(kept) if "loss" in m.values), None)
    job.final_eval_loss = next((m.values["eval_loss"] for m in reversed(kept) if "eval_loss" in m.values), None)
    parts = [f"{n_metrics} metric points", f"{n_samples} watch-prompt answers"]
    if removed:
        parts.append(f"checkpoints {', '.join(removed)}")
    return f"dropped what came after step {step}: {', '.join(parts)}"


def resume_job(session: Session, *, user: User, job_id: int, checkpoint: str | None = None) -> Job:
    """Queue a paused, failed or cancelled job again from `checkpoint` (default: its latest). The caller
    enqueues it. Metrics, answers and checkpoints after the checkpoint's step are dropped."""
    job = get_job(session, user=user, job_id=job_id)
    if job.status not in RESUMABLE:
        raise Conflict(f"job {job.id} is {job.status}; only a paused, failed or cancelled job can be resumed")
    chosen = _checkpoint(job, checkpoint)
    requeued = lease.requeue(
        session,
        JOB,
        job.id,
        where=Job.status == job.status,
        cancel_requested=False,
        pause_requested=False,
        resume_checkpoint=chosen.key,
        current_step=chosen.step,
        finished_at=None,
        error=None,
    )
    if not requeued:  # someone else resumed (or the reaper moved) it between our read and our write
        raise Conflict(f"job {job.id} changed state; reload and try again")
    session.refresh(job)
    dropped = drop_after(session, job, chosen.step)
    add_event(session, job.id, f"resume queued from {chosen.name}")
    if dropped:
        add_event(session, job.id, dropped)
    session.flush()
    session.refresh(job)
    return job


def inputs_of(job: Job) -> dict[str, Any]:
    """The job's inputs as a JobCreate body would give them (to clone it, or estimate it again)."""
    return {
        "name": job.name,
        "kind": job.kind,
        "dataset_id": job.dataset_id,
        "base_model": job.base_model_id,
        "validation_dataset_id": job.validation_dataset_id,
        "architecture": job.architecture,
        "tokenizer_model": job.tokenizer_model_id,
        "method": job.method,
        "objective": job.objective,
        "hyperparameters": job.hyperparameters or {},
        "method_config": job.method_config or {},
        "objective_config": job.objective_config or {},
        "watch_prompts": job.watch_prompts,
        "priority": job.priority,
    }


def clone_job(session: Session, *, user: User, job_id: int, data: JobClone) -> Job:
    """A new queued job with the source's inputs, and `data`'s changes. The caller enqueues it."""
    source = get_job(session, user=user, job_id=job_id)
    # Old-style keys (lora_r, dpo_beta) among the changes change the method's or objective's settings.
    legacy = registry.split_legacy(data.hyperparameters, source.method, source.objective)
    hp = legacy.hyperparameters | {key: data.hyperparameters[key] for key in legacy.foreign}  # refused by name
    try:
        body = JobCreate.model_validate(
            inputs_of(source)
            | {
                "name": data.name if data.name is not None else f"{source.name} (clone)"[:200],
                "hyperparameters": {**(source.hyperparameters or {}), **hp},
                "method_config": {**(source.method_config or {}), **legacy.method, **data.method_config},
                "objective_config": {**(source.objective_config or {}), **legacy.objective, **data.objective_config},
                "watch_prompts": source.watch_prompts if data.watch_prompts is None else data.watch_prompts,
            }
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise Invalid(f"{field}: {first['msg']}", field=field) from exc
    job = create_job(session, user=user, data=body)
    job.cloned_from_id = source.id
    add_event(session, job.id, f"cloned from job {source.id}")
    return job
