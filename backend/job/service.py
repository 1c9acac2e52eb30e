"""Jobs as the web app sees them: create, list, read, cancel, and the rows the worker wrote."""

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ValidationError
from sqlalchemy import Row, func, select, update
from sqlalchemy.orm import Session

from backend.config import get_settings
from backend.db import Artifact, Dataset, Job, JobEvent, JobMetric, JobSample, Model, User, metric_rollup, utcnow
from backend.db.metric_rollup import ChartPoint
from backend.errors import Invalid, NotFound
from backend.job.lifecycle import add_event
from backend.job.schemas import JobCreate, JobRead, batch_problem
from backend.method import registry
from backend.method.settings import MethodSettings
from backend.model.service import ready_model
from backend.storage import get_storage
from backend.worker.service import require_qlora_worker


def _visible(user: User) -> bool:
    return user.is_admin


def get_job(session: Session, *, user: User, job_id: int) -> Job:
    """The job, if `user` may see it."""
    job = session.get(Job, job_id)
    if job is None or not (job.owner_id == user.id or _visible(user)):
        raise NotFound(f"job {job_id} not found")
    return job


def list_jobs(session: Session, *, user: User, limit: int = 200, before: int | None = None) -> list[Job]:
    """Newest first, the `limit` newest with an id below `before` if given; admins see everyone's."""
    q = select(Job).order_by(Job.id.desc()).limit(limit)
    if before is not None:
        q = q.where(Job.id < before)
    if not user.is_admin:
        q = q.where(Job.owner_id == user.id)
    return list(session.scalars(q))


def jobs_using(
    session: Session, *, user: User, model_id: int | None = None, dataset_id: int | None = None
) -> list[Job]:
    """Jobs `user` may see that started from model `model_id` (as base or tokenizer) or trained or validated on
    dataset `dataset_id`, newest first."""
    q = select(Job).order_by(Job.id.desc()).limit(200)
    if model_id is not None:
        q = q.where((Job.base_model_id == model_id) | (Job.tokenizer_model_id == model_id))
    if dataset_id is not None:
        q = q.where((Job.dataset_id == dataset_id) | (Job.validation_dataset_id == dataset_id))
    if not user.is_admin:
        q = q.where(Job.owner_id == user.id)
    return list(session.scalars(q))


def jobs_by_model(session: Session, *, user: User) -> dict[int, list[Job]]:
    """Model id → the jobs `user` may see that started from it (as base or tokenizer), newest first."""
    q = select(Job).where(Job.base_model_id.is_not(None) | Job.tokenizer_model_id.is_not(None)).order_by(Job.id.desc())
    if not user.is_admin:
        q = q.where(Job.owner_id == user.id)
    found: dict[int, list[Job]] = {}
    for job in session.scalars(q):
        for model_id in {job.base_model_id, job.tokenizer_model_id} - {None}:
            found.setdefault(model_id, []).append(job)  # type: ignore[arg-type]
    return found


def owned_dataset(session: Session, user: User, dataset_id: int, field: str) -> Dataset:
    dataset = session.get(Dataset, dataset_id)
    if dataset is None or not (dataset.owner_id == user.id or user.is_admin):
        raise Invalid(f"dataset {dataset_id} not found", field=field)
    return dataset


def _objective(data: JobCreate, dataset: Dataset) -> str:
    """The objective asked for, or the natural one for the dataset's shape; refuse what cannot train."""
    if data.kind == "pretrain" and dataset.shape != "text":
        raise Invalid(f"pretraining needs raw text; dataset {dataset.id} is {dataset.shape}", field="dataset_id")
    objective = data.objective or registry.default_objective(dataset.shape)
    if objective is None:
        raise Invalid(
            f"dataset {dataset.id} holds {dataset.shape} records, which no objective here trains on yet",
            field="dataset_id",
        )
    spec = registry.objective(objective)
    if dataset.shape not in spec.shapes:
        raise Invalid(
            f"objective {objective} needs {' or '.join(spec.shapes)} records; dataset {dataset.id} is {dataset.shape}",
            field="objective",
        )
    if problem := batch_problem(objective, data.hyperparameters.batch_size):
        raise Invalid(problem, field="hyperparameters.batch_size")  # the objective came from the dataset
    return objective


def _validated(model: type[BaseModel], values: dict[str, Any], field: str) -> BaseModel:
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join([field, *(str(p) for p in first["loc"])])
        raise Invalid(f"{where}: {first['msg']}", field=where) from exc


def job_settings(data: JobCreate, objective: str) -> tuple[MethodSettings, BaseModel]:
    """The method's and the objective's settings, validated by their registry classes (old-style keys in
    `hyperparameters` included: one that belongs to another method or objective is refused unless it holds that
    setting's default, and one that contradicts method_config / objective_config is refused)."""
    method = registry.method(data.method)
    if data.kind == "finetune" and objective not in method.objectives:
        raise Invalid(
            f"method {method.name} does not train objective {objective}; it trains {', '.join(method.objectives)}",
            field="method",
        )
    if data.hyperparameters.gradient_checkpointing and not method.gradient_checkpointing:
        raise Invalid(
            f"method {method.name} cannot recompute activations (gradient_checkpointing): turn it off",
            field="hyperparameters.gradient_checkpointing",
        )
    legacy = registry.split_legacy(data._legacy, method.name, objective)
    if legacy.foreign:
        raise Invalid(
            f"hyperparameters.{legacy.foreign[0]} is not a setting of method {method.name} or objective {objective} "
            "(each method's and objective's settings go in method_config / objective_config: GET /api/methods)",
            field=f"hyperparameters.{legacy.foreign[0]}",
        )
    settings = _validated(method.settings, _merged(legacy.method, data.method_config, "method_config"), "method_config")
    assert isinstance(settings, MethodSettings)
    spec = registry.objective(objective)
    values = _merged(legacy.objective, data.objective_config, "objective_config")
    return settings, _validated(spec.settings, values, "objective_config")


def _merged(legacy: dict[str, Any], given: dict[str, Any], field: str) -> dict[str, Any]:
    """Old-style keys and the new settings object together; the same setting twice must agree."""
    for name, value in legacy.items():
        if name in given and given[name] != value:
            raise Invalid(
                f"{field}.{name} is {given[name]!r} but the old-style hyperparameters key for it says {value!r}",
                field=f"{field}.{name}",
            )
    return {**legacy, **given}


def create_job(session: Session, *, user: User, data: JobCreate) -> Job:
    """Validate references and store a queued job. The caller enqueues it after commit."""
    dataset = owned_dataset(session, user, data.dataset_id, "dataset_id")
    if data.base_model is not None:
        ready_model(session, user=user, model_id=data.base_model, field="base_model")
    if data.tokenizer_model is not None:
        ready_model(session, user=user, model_id=data.tokenizer_model, field="tokenizer_model")
    objective = _objective(data, dataset)
    if data.validation_dataset_id == dataset.id:
        raise Invalid("the validation dataset must differ from the training dataset", field="validation_dataset_id")
    if data.validation_dataset_id is not None:
        validation = owned_dataset(session, user, data.validation_dataset_id, "validation_dataset_id")
        if validation.shape != dataset.shape:
            raise Invalid(
                f"validation dataset {validation.id} is {validation.shape}, the training data is {dataset.shape}",
                field="validation_dataset_id",
            )
    if data.priority > 0 and not user.is_admin:
        # A raised priority jumps every other user's queue: an operator's call, not a job owner's.
        raise Invalid("only an administrator may raise a job's priority above 0", field="priority")
    method_settings, objective_settings = job_settings(data, objective)
    if registry.method(data.method).requires == "cuda_bitsandbytes":
        require_qlora_worker(session)  # 4-bit weights need CUDA and bitsandbytes; a CPU worker would fail it
    job = Job(
        owner_id=user.id,
        name=data.name or f"{data.kind}-{dataset.name}"[:200],
        kind=data.kind,
        method=data.method,
        objective=objective,
        architecture=data.architecture,
        tokenizer_model_id=data.tokenizer_model,
        dataset_id=dataset.id,
        base_model_id=data.base_model,
        validation_dataset_id=data.validation_dataset_id,
        hyperparameters=data.hyperparameters.model_dump(exclude_none=True),
        method_config=method_settings.model_dump(),
        objective_config=objective_settings.model_dump(),
        watch_prompts=list(data.watch_prompts),
        priority=data.priority,
    )
    if data.cloned_from is not None:
        source = session.get(Job, data.cloned_from)
        if source is None or not (source.owner_id == user.id or _visible(user)):
            raise Invalid(f"job {data.cloned_from} not found", field="cloned_from")
        job.cloned_from_id = source.id
    session.add(job)
    session.flush()
    add_event(session, job.id, f"{job.kind} job queued")
    if job.cloned_from_id is not None:
        add_event(session, job.id, f"cloned from job {job.cloned_from_id} and edited")
    return job


def cancel_job(session: Session, *, user: User, job_id: int) -> Job:
    """A queued or paused job is cancelled at once; a running one is asked to stop at its next step."""
    job = get_job(session, user=user, job_id=job_id)
    # Conditional updates: a worker may claim the job between our read and our write.
    queued = session.execute(
        update(Job)
        .where(Job.id == job.id, Job.status.in_(("queued", "paused")))
        .values(status="cancelled", cancel_requested=True, finished_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    if queued.rowcount == 1:  # type: ignore[attr-defined]
        was = "while paused" if job.status == "paused" else "before it started"
        add_event(session, job.id, f"cancelled {was}")
    else:
        running = session.execute(
            update(Job)
            .where(Job.id == job.id, Job.status == "running", Job.cancel_requested.is_(False))
            .values(cancel_requested=True)
            .execution_options(synchronize_session=False)
        )
        if running.rowcount == 1:  # type: ignore[attr-defined]
            add_event(session, job.id, "cancel requested; stopping at the next step")
    session.refresh(job)
    return job


def note_unsent(session: Session, *, job: Job) -> None:
    """Say why a queued job waits: the broker was unreachable (the reaper's sweep sends it once it is back)."""
    add_event(
        session, job.id, "the task queue is unreachable; the job stays queued and is sent when it is back", "warning"
    )


def to_read(session: Session, job: Job) -> JobRead:
    """The API view of a job, with its output model and an ETA from the pace so far."""
    return to_reads(session, [job])[0]


def to_reads(session: Session, jobs: list[Job]) -> list[JobRead]:
    """The API views of many jobs (a list page): what `to_read` adds, read in one query per table."""
    ids = [j.id for j in jobs]
    # A job registers one output model; ordered so that, were there more, every view names the same (the first).
    outputs: dict[int, int] = {}
    for job_id, model_id in session.execute(
        select(Model.job_id, Model.id).where(Model.job_id.in_(ids)).order_by(Model.id)
    ).tuples():
        if job_id is not None:
            outputs.setdefault(job_id, model_id)
    dataset_ids = {j.dataset_id for j in jobs}
    datasets = dict(session.execute(select(Dataset.id, Dataset.name).where(Dataset.id.in_(dataset_ids))).tuples().all())
    base_ids = {j.base_model_id for j in jobs if j.base_model_id is not None}
    bases = (
        dict(session.execute(select(Model.id, Model.name).where(Model.id.in_(base_ids))).tuples().all())
        if base_ids
        else {}
    )
    now, max_attempts = utcnow(), get_settings().max_attempts
    out = []
    for job in jobs:
        view = JobRead.model_validate(job)
        view.output_model_id = outputs.get(job.id)
        view.eta_seconds = eta_seconds(job, now)
        view.attempt_limit = job.attempt_base + max_attempts
        view.dataset_name = datasets.get(job.dataset_id)
        view.base_model_name = bases.get(job.base_model_id) if job.base_model_id is not None else None
        if job.started_at:
            view.duration_seconds = max(0.0, ((job.finished_at or now) - job.started_at).total_seconds())
        out.append(view)
    return out


def eta_seconds(job: Job, now: datetime) -> float | None:
    """Seconds left at this attempt's pace: time since it started over the steps it has run since."""
    # A resumed job's clock restarts at its claim while its step count continues from start_step.
    done = job.current_step - (job.start_step or 0)
    if job.status != "running" or not job.started_at or not job.total_steps or done < 1:
        return None
    per_step = (now - job.started_at).total_seconds() / done
    return max(0.0, per_step * (job.total_steps - job.current_step))


def metrics_after(session: Session, job_id: int, after_id: int = 0, limit: int | None = None) -> list[Row[Any]]:
    """The job's points written after point `after_id`, in the order they were written (at most `limit`), as
    plain rows (id, step, created_at, values): a page of thousands loads several times faster than as objects."""
    m = JobMetric
    q = select(m.id, m.step, m.created_at, m.values).where(m.job_id == job_id, m.id > after_id).order_by(m.id)
    return list(session.execute(q.limit(limit)))


def newest_metric_id(session: Session, job_id: int) -> int:
    """The id of the job's latest point (0 if none): where a live follower starts."""
    return session.scalar(select(func.max(JobMetric.id)).where(JobMetric.job_id == job_id)) or 0


def newest_event_id(session: Session, job_id: int) -> int:
    """The id of the job's latest log line (0 if none)."""
    return session.scalar(select(func.max(JobEvent.id)).where(JobEvent.job_id == job_id)) or 0


def chart_metrics(session: Session, job_id: int) -> list[ChartPoint]:
    """The job's points for a chart, by step: all of them for a short run, else at most 2,000 per series with
    the lowest and highest point of every bucket of steps kept (a loss spike stays visible)."""
    return metric_rollup.chart_points(session, job_id)


def events_after(session: Session, job_id: int, after_id: int = 0) -> list[JobEvent]:
    q = select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.id > after_id).order_by(JobEvent.id)
    return list(session.scalars(q))


def samples(session: Session, job_id: int) -> list[JobSample]:
    """Watch-prompt answers, oldest eval first."""
    q = select(JobSample).where(JobSample.job_id == job_id).order_by(JobSample.id)
    return list(session.scalars(q))


def artifacts(session: Session, job_id: int) -> list[Artifact]:
    return list(session.scalars(select(Artifact).where(Artifact.job_id == job_id).order_by(Artifact.id)))


def get_artifact(session: Session, *, user: User, job_id: int, name: str) -> Artifact:
    get_job(session, user=user, job_id=job_id)
    art = session.scalar(select(Artifact).where(Artifact.job_id == job_id, Artifact.name == name))
    if art is None or not get_storage().exists(art.path):
        raise NotFound(f"job {job_id} has no artifact {name!r}")
    return art
