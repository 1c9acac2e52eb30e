"""/v1/models: the studio's base models (`studio-model-<id>`, or a model's exact name) and the jobs' fine-tuned
models (`ft:<base>:<suffix>:ftjob-<id>`, a checkpoint with `:ckpt-step-<step>`)."""

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.db import Job, Model, User
from backend.errors import Invalid, NotFound
from backend.job import service as jobs
from backend.job.checkpoints import list_checkpoints
from backend.model import service as models
from backend.openai_compat import ids
from backend.openai_compat.errors import ApiError
from backend.openai_compat.files import epoch
from backend.playground.service import job_output_key, stored_kind
from backend.storage import get_storage


def _missing(value: str, param: str = "model") -> ApiError:
    return ApiError(f"The model {value!r} does not exist or you do not have access to it", status=404, param=param)


def base_view(model: Model) -> dict[str, Any]:
    owner = "studio" if model.shared else f"user-{model.owner_id}"
    return {"id": ids.model_id(model.id), "object": "model", "created": epoch(model.created_at), "owned_by": owner}


def fine_tuned_name(session: Session, job: Job) -> str | None:
    """`ft:<base>:<suffix>:ftjob-<id>` of a succeeded fine-tune (None before it succeeds, or without a base)."""
    if job.status != "succeeded" or job.kind != "finetune" or job.base_model_id is None:
        return None
    suffix = str((job.api_options or {}).get("suffix") or "")
    return ids.fine_tuned_id(ids.model_id(job.base_model_id), suffix, job.id)


def fine_tuned_view(session: Session, job: Job, name: str) -> dict[str, Any]:
    return {
        "id": name,
        "object": "model",
        "created": epoch(job.finished_at or job.created_at),
        "owned_by": f"user-{job.owner_id}",
    }


def _named(session: Session, *, user: User, name: str) -> Model | None:
    """The one ready model `user` may use that is called `name` (None for none; 400 when several are)."""
    found = [m for m in models.list_models(session, user=user) if m.name == name and m.status == "ready"]
    if len(found) > 1:
        choices = ", ".join(ids.model_id(m.id) for m in found)
        raise ApiError(f"several models are called {name!r}; use one of their ids: {choices}", param="model")
    return found[0] if found else None


def base_model(session: Session, *, user: User, value: str, param: str = "model") -> Model:
    """The ready base model `value` names, to train from (a full fine-tune's output model counts)."""
    ref = ids.parse_model(value)
    try:
        if ref.base_id is not None:
            return models.ready_model(session, user=user, model_id=ref.base_id, field=param)
        if ref.job_id is not None:
            job = fine_tuned_job(session, user=user, value=value)
            output = session.scalar(select(Model).where(Model.job_id == job.id).order_by(Model.id))
            if output is None or ref.step is not None:
                raise ApiError(
                    f"{value} is a LoRA adapter (or a checkpoint); a job trains from a base model or a full "
                    "fine-tune's model",
                    param=param,
                )
            return models.ready_model(session, user=user, model_id=output.id, field=param)
    except Invalid as exc:
        raise ApiError(exc.message, param=param) from None
    found = _named(session, user=user, name=value)
    if found is None:
        raise ApiError(f"The model {value!r} does not exist or you do not have access to it", param=param)
    return found


def fine_tuned_job(session: Session, *, user: User, value: str) -> Job:
    """The succeeded job whose fine-tuned model (or checkpoint) `value` names; 404 otherwise."""
    ref = ids.parse_model(value)
    if ref.job_id is None:
        raise _missing(value)
    try:
        job = jobs.get_job(session, user=user, job_id=ref.job_id)
    except NotFound:
        raise _missing(value) from None
    if ref.step is not None:
        # A checkpoint (of a job that may still run): named as the job's checkpoints list names it, and stored.
        suffix = str((job.api_options or {}).get("suffix") or "")
        named = ids.fine_tuned_id(base_name(job), suffix, job.id, ref.step) == value
        if not named or ref.step not in {c.step for c in list_checkpoints(job.id)}:
            raise _missing(value)
        return job
    deleted = (job.api_options or {}).get("model_deleted")
    if fine_tuned_name(session, job) != value or deleted or stored_output(job.id) is None:
        raise _missing(value)
    return job


def base_name(job: Job) -> str:
    """The base part of the job's model names: its base model's id (a pretrain's: its architecture)."""
    return ids.model_id(job.base_model_id) if job.base_model_id is not None else str(job.architecture or "")


def stored_output(job_id: int) -> str | None:
    """The stored key of the job's final adapter or model (None once deleted, or before it is written)."""
    out = job_output_key(job_id)
    return next((f"{out}/{n}" for n in ("adapter", "model") if stored_kind(f"{out}/{n}") is not None), None)


def list_models(session: Session, *, user: User) -> dict[str, Any]:
    """Base models, then the fine-tuned models of succeeded jobs whose weights are still stored."""
    data = [base_view(m) for m in models.list_models(session, user=user) if m.status == "ready"]
    done = select(Job).where(Job.status == "succeeded", Job.kind == "finetune").order_by(Job.id.desc())
    if not user.is_admin:
        done = done.where(Job.owner_id == user.id)
    for job in session.scalars(done.limit(500)):
        name = fine_tuned_name(session, job)
        # The flag, not a look at the storage: with S3 that would be a listing per job.
        if name is not None and not (job.api_options or {}).get("model_deleted"):
            data.append(fine_tuned_view(session, job, name))
    return {"object": "list", "data": data}


def get_model(session: Session, *, user: User, value: str) -> dict[str, Any]:
    ref = ids.parse_model(value)
    if ref.job_id is not None:
        job = fine_tuned_job(session, user=user, value=value)
        return fine_tuned_view(session, job, value)
    if ref.base_id is not None:
        try:
            return base_view(models.visible_model(session, user=user, model_id=ref.base_id))
        except NotFound:
            raise _missing(value) from None
    found = _named(session, user=user, name=value)
    if found is None:
        raise _missing(value)
    return base_view(found)


def delete_model(session: Session, *, user: User, value: str) -> dict[str, Any]:
    """Delete a fine-tuned model: the job's final adapter or model (and the base-model entry a full fine-tune
    registered). The job, its log, metrics and checkpoints stay; base models are managed at /api/models."""
    ref = ids.parse_model(value)
    if ref.job_id is None or ref.step is not None:
        get_model(session, user=user, value=value)  # 404 for a model this user cannot see
        raise ApiError(f"{value} is not a fine-tuned model; only those can be deleted here", status=403, param="model")
    job = fine_tuned_job(session, user=user, value=value)
    if not (job.owner_id == user.id or user.is_admin):
        raise ApiError(f"{value} belongs to another user", status=403, param="model")
    for output in session.scalars(select(Model).where(Model.job_id == job.id)):
        models.delete_model(session, user=user, model_id=output.id)  # 409 while a job trains from it
    storage = get_storage()
    for name in ("adapter", "model"):
        storage.delete_prefix(f"{job_output_key(job.id)}/{name}")
    job.api_options = {**(job.api_options or {}), "model_deleted": True}
    return {"id": value, "object": "model", "deleted": True}
