"""/v1/fine_tuning/jobs: an OpenAI job body becomes an ordinary studio fine-tune (LoRA, objective sft or dpo), so
it shows on the dashboard like any other; pause, resume and cancel are the studio's own."""

from typing import Any

from pydantic import ValidationError
from sqlalchemy.orm import Session

from backend.db import Dataset, Job, User
from backend.db.job import FINAL_STATUSES
from backend.errors import Invalid, NotFound
from backend.job import admission, control, estimate
from backend.job import service as jobs
from backend.job.schemas import Hyperparameters as StudioHyperparameters
from backend.job.schemas import JobCreate as StudioJobCreate
from backend.method.settings import DpoSettings
from backend.openai_compat import ids, schemas
from backend.openai_compat.errors import ApiError
from backend.openai_compat.files import get_file
from backend.openai_compat.models import base_model

# "auto" takes the studio's defaults: one pass over the data, its batch size, its learning rate (which the
# multiplier scales), DPO's beta; LoRA is the method (OpenAI trains adapters of its models too).
DEFAULT_EPOCHS = 1
DEFAULT_BATCH_SIZE = StudioHyperparameters.model_fields["batch_size"].default
DEFAULT_LEARNING_RATE = StudioHyperparameters.model_fields["learning_rate"].default
DEFAULT_SEED = StudioHyperparameters.model_fields["seed"].default
DEFAULT_BETA = DpoSettings.model_fields["beta"].default
METHOD = "lora"
# OpenAI's method types → the studio objective each trains (its other objectives have no OpenAI method).
OBJECTIVES = dict(supervised="sft", dpo="dpo")
# OpenAI keeps the checkpoints of a job's last three epochs; so does a /v1 job.
KEPT_EPOCHS = 3

# The studio field a refusal names → the OpenAI parameter it came from ({hp}: where hyperparameters were given).
PARAMS = {
    "dataset_id": "training_file",
    "validation_dataset_id": "validation_file",
    "base_model": "model",
    "objective": "method.type",
    "hyperparameters.batch_size": "{hp}.batch_size",
    "hyperparameters.epochs": "{hp}.n_epochs",
    "hyperparameters.learning_rate": "{hp}.learning_rate_multiplier",
    "hyperparameters.seed": "seed",
    "objective_config.beta": "{hp}.beta",
}


def _param(field: str | None, hp: str) -> str | None:
    if field is None:
        return None
    return PARAMS.get(field, field).format(hp=hp)


def _dataset(session: Session, user: User, value: str, param: str) -> Dataset:
    try:
        return get_file(session, user=user, file_id=value)
    except ApiError:
        raise ApiError(f"invalid file id {value!r}: no such file", param=param) from None


def epochs_of(body: schemas.JobCreate) -> int:
    n_epochs = body.chosen_hyperparameters().n_epochs
    return DEFAULT_EPOCHS if n_epochs == "auto" else n_epochs


def studio_body(
    body: schemas.JobCreate, *, base_id: int, train: Dataset, valid: Dataset | None, steps_per_epoch: int | None = None
) -> dict[str, Any]:
    """The studio job body an OpenAI job body means (hyperparameters "auto" left to the studio's defaults); with
    `steps_per_epoch`, a checkpoint at the end of each epoch, the last KEPT_EPOCHS of them kept (OpenAI's rule)."""
    hp = body.chosen_hyperparameters()
    multiplier = 1.0 if hp.learning_rate_multiplier == "auto" else hp.learning_rate_multiplier
    hyperparameters: dict[str, Any] = {
        "epochs": epochs_of(body),
        "batch_size": DEFAULT_BATCH_SIZE if hp.batch_size == "auto" else hp.batch_size,
        "learning_rate": DEFAULT_LEARNING_RATE * multiplier,
        "seed": DEFAULT_SEED if body.seed is None else body.seed,
    }
    if steps_per_epoch is not None:
        hyperparameters["checkpoint_steps"] = max(1, steps_per_epoch)
        hyperparameters["keep_checkpoints"] = min(KEPT_EPOCHS, hyperparameters["epochs"])
    objective_config = {}
    if isinstance(hp, schemas.DpoHyperparameters) and hp.beta != "auto":
        objective_config["beta"] = hp.beta
    kind = body.method_type()
    return {
        "name": (body.suffix or f"{kind}-{train.name}")[:200],
        "kind": "finetune",
        "dataset_id": train.id,
        "validation_dataset_id": valid.id if valid is not None else None,
        "base_model": base_id,
        "method": METHOD,
        "objective": OBJECTIVES[kind],
        "objective_config": objective_config,
        "hyperparameters": hyperparameters,
    }


def _studio_job(body: dict[str, Any], hp: str) -> StudioJobCreate:
    try:
        return StudioJobCreate.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise ApiError(f"{first['msg']}", param=_param(field, hp)) from None


def create_job(session: Session, *, user: User, body: schemas.JobCreate) -> Job:
    """Store the studio job `body` means, admitted as POST /api/jobs admits one (the pre-flight check and the
    memory fit); the caller commits and sends it."""
    if body.integrations:
        raise ApiError("integrations (Weights & Biases) are not supported here", param="integrations")
    hp = f"method.{body.method_type()}.hyperparameters" if body.method is not None else "hyperparameters"
    base = base_model(session, user=user, value=body.model)
    train = _dataset(session, user, body.training_file, "training_file")
    valid = _dataset(session, user, body.validation_file, "validation_file") if body.validation_file else None
    try:
        # The planned steps place a checkpoint at each epoch's end; the settings then go through the schema and the
        # admission like any job's.
        draft = _studio_job(studio_body(body, base_id=base.id, train=train, valid=valid), hp)
        per_epoch = round(estimate.estimate_job(session, user=user, body=draft).steps / epochs_of(body))
        data = _studio_job(studio_body(body, base_id=base.id, train=train, valid=valid, steps_per_epoch=per_epoch), hp)
        job = jobs.create_job(session, user=user, data=data)
        admission.admit(session, user, data, job)
    except Invalid as exc:
        raise ApiError(exc.message, param=_param(exc.details.get("field"), hp)) from None
    job.api_options = {
        "model": body.model,
        "suffix": body.suffix or "",
        "metadata": body.metadata,
        "method": body.method_type(),
        "hyperparameters": body.chosen_hyperparameters().model_dump(),
    }
    return job


def find_job(session: Session, *, user: User, value: str) -> Job:
    """The job `ftjob-<id>` names (404 in OpenAI's shape otherwise)."""
    job_id = ids.parse_job(value, param="fine_tuning_job_id")
    try:
        return jobs.get_job(session, user=user, job_id=job_id)
    except NotFound:
        raise ApiError(f"No such fine-tuning job: {value}", status=404, param="fine_tuning_job_id") from None


def cancel(session: Session, *, user: User, value: str) -> Job:
    """Cancel a queued, running or paused job; an ended one is a 400, as OpenAI answers (the studio's own API
    returns it unchanged)."""
    job = find_job(session, user=user, value=value)
    if job.status in FINAL_STATUSES:
        raise ApiError(f"{value} has already ended ({job.status}); it cannot be cancelled", param="fine_tuning_job_id")
    return jobs.cancel_job(session, user=user, job_id=job.id)


def pause(session: Session, *, user: User, value: str) -> Job:
    return control.pause_job(session, user=user, job_id=find_job(session, user=user, value=value).id)


def resume(session: Session, *, user: User, value: str) -> Job:
    return control.resume_job(session, user=user, job_id=find_job(session, user=user, value=value).id)


def list_jobs(
    session: Session, *, user: User, after: str | None, limit: int, metadata: dict[str, str]
) -> tuple[list[Job], bool]:
    """`limit` jobs newest first after job `after`, and whether there are more; `metadata` filters (OpenAI's
    metadata[key]=value query), looked at page by page."""
    before = ids.parse_job(after, param="after", status=400) if after else None
    found: list[Job] = []
    while len(found) <= limit:
        page = jobs.list_jobs(session, user=user, limit=max(limit + 1, 100), before=before)
        if not page:
            break
        found += [j for j in page if _matches(j, metadata)]
        before = page[-1].id
    return found[:limit], len(found) > limit


def _matches(job: Job, metadata: dict[str, str]) -> bool:
    given = (job.api_options or {}).get("metadata") or {}
    return job.kind == "finetune" and all(given.get(k) == v for k, v in metadata.items())
