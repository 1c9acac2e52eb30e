"""What a job page says about progress before the worker has: the steps a queued job will take."""

from pydantic import ValidationError
from sqlalchemy.orm import Session

from backend.db import Job, User
from backend.errors import DomainError
from backend.job.control import inputs_of
from backend.job.estimate import estimate_job
from backend.job.schemas import JobCreate


def planned_steps(session: Session, job: Job) -> int | None:
    """Optimizer steps the job will take: the worker's count once it has one, else max_steps, else the
    launch estimate's (epochs over its dataset's examples); None when not even that can be worked out."""
    if job.total_steps:
        return job.total_steps
    max_steps = (job.hyperparameters or {}).get("max_steps")
    if isinstance(max_steps, int) and max_steps > 0:
        return max_steps
    owner = session.get(User, job.owner_id)  # the estimate reads the owner's datasets and models
    if owner is None:
        return None
    try:
        body = JobCreate.model_validate(inputs_of(job))
        return estimate_job(session, user=owner, body=body).steps
    except (DomainError, ValidationError):
        return None  # e.g. its base model was deleted since: the page shows "?" as before
