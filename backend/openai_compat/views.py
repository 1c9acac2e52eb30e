"""A studio job as OpenAI's objects: the fine_tuning.job, its events (log lines and logged points, newest first)
and its checkpoints."""

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, false, or_, select
from sqlalchemy.orm import Session

from backend.db import Job, JobEvent, JobMetric, utcnow
from backend.db.job import FINAL_STATUSES
from backend.job import service as jobs
from backend.job.checkpoints import list_checkpoints
from backend.openai_compat import ids
from backend.openai_compat.errors import ApiError
from backend.openai_compat.files import epoch
from backend.openai_compat.jobs import DEFAULT_EPOCHS, DEFAULT_LEARNING_RATE, OBJECTIVES
from backend.openai_compat.models import base_name, fine_tuned_name
from backend.openai_compat.results import openai_values

POINT, MESSAGE = 0, 1  # events at the same instant: the point first (older), then the log line
# How far back the newest points are searched for the tokens a job trained on (the token meter's points).
TOKEN_POINTS = 50


def _trained_tokens(session: Session, job_id: int) -> int | None:
    newest = (JobMetric.step.desc(), JobMetric.id.desc())  # by the (job_id, step) index, as _older_points
    q = select(JobMetric.values).where(JobMetric.job_id == job_id).order_by(*newest).limit(TOKEN_POINTS)
    seen = next((v["tokens_seen"] for v in session.scalars(q) if "tokens_seen" in v), None)
    return int(seen) if seen is not None else None


def _hyperparameters(job: Job) -> dict[str, Any]:
    hp = job.hyperparameters or {}
    values: dict[str, Any] = {
        "n_epochs": _whole(hp.get("epochs") or DEFAULT_EPOCHS),
        "batch_size": hp.get("batch_size"),
        "learning_rate_multiplier": round(hp.get("learning_rate", DEFAULT_LEARNING_RATE) / DEFAULT_LEARNING_RATE, 6),
    }
    if job.objective == "dpo":
        values["beta"] = (job.objective_config or {}).get("beta")
    return values


def _whole(epochs: float) -> float | int:
    """OpenAI's n_epochs is an integer; the studio stores a float (an /api job may train 1.5 epochs)."""
    return int(epochs) if float(epochs).is_integer() else epochs


def method_type(job: Job) -> str:
    """OpenAI's method type of the job's objective; another objective (a job from /api: kto, causal_lm, ...) is
    shown by its studio name rather than passed off as supervised."""
    types = {objective: kind for kind, objective in OBJECTIVES.items()}
    return types.get(str(job.objective), str(job.objective or "supervised"))


def job_view(session: Session, job: Job) -> dict[str, Any]:
    """The fine_tuning.job object of `job`."""
    options = job.api_options or {}
    hp = _hyperparameters(job)
    kind = method_type(job)
    error = None
    if job.status == "failed":
        error = {"code": "training_failed", "message": (job.error or "the job failed")[:2000], "param": None}
    eta = jobs.eta_seconds(job, utcnow())
    return {
        "object": "fine_tuning.job",
        "id": ids.job_id(job.id),
        "model": options.get("model") or base_name(job),
        "created_at": epoch(job.created_at),
        "finished_at": epoch(job.finished_at),
        "fine_tuned_model": fine_tuned_name(session, job),
        "organization_id": f"user-{job.owner_id}",
        "result_files": [ids.results_id(job.id)] if job.status in (*FINAL_STATUSES, "paused") else [],
        "status": job.status,  # the studio's statuses are OpenAI's (files are validated at upload: no validating_files)
        "validation_file": ids.file_id(job.validation_dataset_id) if job.validation_dataset_id else None,
        "training_file": ids.file_id(job.dataset_id),
        "hyperparameters": {k: v for k, v in hp.items() if k != "beta"},
        "method": {"type": kind, kind: {"hyperparameters": hp}},
        "trained_tokens": _trained_tokens(session, job.id),
        "error": error,
        "seed": (job.hyperparameters or {}).get("seed"),
        "estimated_finish": epoch(utcnow() + timedelta(seconds=eta)) if eta is not None else None,
        "integrations": [],
        "metadata": options.get("metadata"),
        "user_provided_suffix": options.get("suffix") or None,
    }


def _message_event(job_id: int, row: JobEvent) -> dict[str, Any]:
    return {
        "object": "fine_tuning.job.event",
        "id": f"ftevent-{row.id}",
        "created_at": epoch(row.created_at),
        "level": "error" if row.level == "error" else "warn" if row.level == "warning" else "info",
        "message": row.message,
        "data": {},
        "type": "message",
    }


def _metric_event(job: Job, row: JobMetric) -> dict[str, Any]:
    values = openai_values(row.values)
    shown = ", ".join(f"{k.replace('_', ' ')}={v:.4f}" for k, v in values.items() if k.endswith(("loss", "accuracy")))
    total = f"/{job.total_steps}" if job.total_steps else ""
    return {
        "object": "fine_tuning.job.event",
        "id": f"ftevent-m{row.id}",
        "created_at": epoch(row.created_at),
        "level": "info",
        "message": f"Step {row.step}{total}" + (f": {shown}" if shown else ""),
        "data": {"step": row.step, "total_steps": job.total_steps, **values},
        "type": "metrics",
    }


@dataclass(frozen=True)
class Cursor:
    """The event a page goes on after: its time, its kind's rank (a point before a log line written at the same
    instant), its row id, and a point's step."""

    at: datetime
    rank: int
    id: int
    step: int = 0


def _older_messages(session: Session, job_id: int, cursor: Cursor | None, limit: int) -> list[JobEvent]:
    """Log lines older than `cursor`, newest first (a job has a few hundred: sorted by time)."""
    q = select(JobEvent).where(JobEvent.job_id == job_id)
    if cursor is not None:
        same = JobEvent.id < cursor.id if cursor.rank == MESSAGE else false()
        q = q.where(or_(JobEvent.created_at < cursor.at, and_(JobEvent.created_at == cursor.at, same)))
    return list(session.scalars(q.order_by(JobEvent.created_at.desc(), JobEvent.id.desc()).limit(limit)))


def _older_points(session: Session, job_id: int, cursor: Cursor | None, limit: int) -> list[JobMetric]:
    """Logged points older than `cursor`, newest first. By step, then id: the (job_id, step) index reads a page of
    a million-point run without sorting it (a run's steps grow with time; a resume drops the points past its
    checkpoint first)."""
    q = select(JobMetric).where(JobMetric.job_id == job_id)
    if cursor is not None and cursor.rank == POINT:
        q = q.where(or_(JobMetric.step < cursor.step, and_(JobMetric.step == cursor.step, JobMetric.id < cursor.id)))
    elif cursor is not None:
        q = q.where(JobMetric.created_at <= cursor.at)
    return list(session.scalars(q.order_by(JobMetric.step.desc(), JobMetric.id.desc()).limit(limit)))


def events_page(session: Session, job: Job, *, after: str | None, limit: int) -> dict[str, Any]:
    """The job's log lines and logged points as events, newest first, `limit` after the event `after`."""
    cursor = None
    if after:
        kind, row_id = ids.parse_event(after)
        row = session.get(JobMetric, row_id) if kind == "metric" else session.get(JobEvent, row_id)
        if row is None or row.job_id != job.id:
            raise ApiError(f"{after!r} is not an event of {ids.job_id(job.id)}", param="after")
        step = row.step if isinstance(row, JobMetric) else 0
        cursor = Cursor(row.created_at, POINT if kind == "metric" else MESSAGE, row.id, step)
    rows: list[tuple[datetime, int, int, JobMetric | JobEvent]] = [
        (r.created_at, MESSAGE, r.id, r) for r in _older_messages(session, job.id, cursor, limit + 1)
    ]
    rows += [(r.created_at, POINT, r.id, r) for r in _older_points(session, job.id, cursor, limit + 1)]
    merged = sorted(rows, key=lambda t: t[:3], reverse=True)
    page = merged[:limit]
    data = [_metric_event(job, r) if isinstance(r, JobMetric) else _message_event(job.id, r) for _, _, _, r in page]
    return {"object": "list", "data": data, "has_more": len(merged) > limit}


def _checkpoint_metrics(session: Session, job_id: int, step: int) -> dict[str, Any]:
    """What was logged at the checkpoint's step (training and evaluation points joined)."""
    values: dict[str, Any] = {}
    for point in session.scalars(select(JobMetric.values).where(JobMetric.job_id == job_id, JobMetric.step == step)):
        values |= openai_values(point)
    return {"step": step, **values}


def checkpoints_page(session: Session, job: Job, *, after: str | None, limit: int) -> dict[str, Any]:
    """The job's checkpoints, newest first; each is a model chat completions answer with."""
    suffix = str((job.api_options or {}).get("suffix") or "")
    found = sorted(list_checkpoints(job.id), key=lambda c: c.step, reverse=True)
    if after:
        names = [f"ftckpt-{job.id}-{c.step}" for c in found]
        if after not in names:
            raise ApiError(f"{after!r} is not a checkpoint of {ids.job_id(job.id)}", param="after")
        found = found[names.index(after) + 1 :]
    data = [
        {
            "object": "fine_tuning.job.checkpoint",
            "id": f"ftckpt-{job.id}-{c.step}",
            "created_at": epoch(c.created_at),
            "fine_tuned_model_checkpoint": ids.fine_tuned_id(base_name(job), suffix, job.id, c.step),
            "fine_tuning_job_id": ids.job_id(job.id),
            "metrics": _checkpoint_metrics(session, job.id, c.step),
            "step_number": c.step,
        }
        for c in found[:limit]
    ]
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": len(found) > limit,
    }
