"""What a recipe needs to know about its job, read once from the database into plain values.

Recipes never hold an ORM session while they train (hours): they get this snapshot, and write back through
`backend.job.lifecycle`, whose functions each open and commit their own short session.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backend.config import get_settings
from backend.db import Dataset, Job, Model, session_scope
from backend.job.schemas import Hyperparameters


@dataclass(frozen=True)
class JobContext:
    job_id: int
    owner_id: int
    name: str
    kind: str  # "pretrain" | "finetune"
    method: str  # "lora" | "full"
    objective: str  # "causal_lm" | "sft"
    architecture: str | None
    hp: Hyperparameters  # validated again, so every default is filled in
    dataset_name: str
    dataset_path: Path
    dataset_filename: str
    dataset_sha256: str
    base_model_name: str | None
    base_model_path: Path | None
    output_dir: Path  # data_dir/jobs/<id>: checkpoints/, model/ or adapter/, and the zip

    def summary(self) -> dict[str, Any]:
        """The job's inputs as JSON-ready values (for resolved_config and model cards)."""
        return {
            "kind": self.kind,
            "method": self.method,
            "objective": self.objective,
            "architecture": self.architecture,
            "hyperparameters": self.hp.model_dump(),
            "dataset": {"name": self.dataset_name, "filename": self.dataset_filename, "sha256": self.dataset_sha256},
            "base_model": {"name": self.base_model_name, "path": str(self.base_model_path)}
            if self.base_model_path
            else None,
        }


def load_context(job_id: int) -> JobContext:
    """Snapshot job `job_id`, its dataset and base model; create its output directory."""
    with session_scope() as s:
        job = s.get(Job, job_id)
        if job is None:
            raise LookupError(f"job {job_id} does not exist")
        dataset = s.get(Dataset, job.dataset_id)
        if dataset is None:
            raise LookupError(f"dataset {job.dataset_id} of job {job_id} does not exist")
        base = s.get(Model, job.base_model_id) if job.base_model_id is not None else None
        if job.kind == "finetune" and base is None:
            raise LookupError(f"base model {job.base_model_id} of job {job_id} does not exist")
        return JobContext(
            job_id=job.id,
            owner_id=job.owner_id,
            name=job.name,
            kind=job.kind,
            method=job.method or "full",
            objective=job.objective,
            architecture=job.architecture,
            hp=Hyperparameters.model_validate(job.hyperparameters or {}),
            dataset_name=dataset.name,
            dataset_path=Path(dataset.path),
            dataset_filename=dataset.filename,
            dataset_sha256=dataset.sha256,
            base_model_name=base.name if base else None,
            base_model_path=Path(base.path) if base else None,
            output_dir=get_settings().path("jobs", str(job.id)),
        )
