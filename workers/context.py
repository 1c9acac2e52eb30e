"""What a recipe needs to know about its job, read once from the database into plain values.

Recipes never hold an ORM session while they train (hours): they get this snapshot, and write back through
`backend.job.lifecycle`, whose functions each open and commit their own short session.
"""

import shutil
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel

from backend.dataset.formats import Record, read_records
from backend.db import Dataset, Job, Model, session_scope
from backend.job.schemas import Hyperparameters
from backend.method import registry
from backend.method.registry import Method, Objective
from backend.method.settings import MethodSettings
from backend.storage import get_cache, is_local, pinned, work_dir, work_path

S = TypeVar("S", bound=BaseModel)


@dataclass(frozen=True)
class DatasetRef:
    """A stored dataset version and how to read it back (the read options it was validated with)."""

    id: int
    name: str
    key: str  # where the file is stored
    filename: str
    sha256: str
    shape: str
    options: dict[str, Any]

    @classmethod
    def of(cls, row: Dataset) -> "DatasetRef":
        return cls(
            id=row.id,
            name=row.name,
            key=row.path,
            filename=row.filename,
            sha256=row.sha256,
            shape=row.shape,
            options=dict(row.options or {}),
        )

    @property
    def path(self) -> Path:
        """The file on this machine: its own with local storage, else a cached copy (fetched at the first use)."""
        return get_cache().file(self.key)

    def records(self) -> Iterator[Record]:
        """Canonical records, streamed in file order (record indices count from 0 in this order)."""
        return read_records(self.path, self.filename, self.options)

    def summary(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "filename": self.filename, "sha256": self.sha256}


@dataclass(frozen=True)
class JobContext:
    job_id: int
    owner_id: int
    name: str
    kind: str  # "pretrain" | "finetune"
    method: str  # a name in backend.method.registry.METHODS
    objective: str  # a name in backend.method.registry.OBJECTIVES
    architecture: str | None
    hp: Hyperparameters  # validated again, so every default is filled in
    method_config: MethodSettings  # the method's settings class, defaults filled in
    objective_config: BaseModel  # the objective's settings class, defaults filled in
    dataset: DatasetRef
    validation_dataset: DatasetRef | None  # a separate eval file, used instead of a held-out fraction
    base_model_name: str | None
    base_model_path: Path | None
    output_dir: Path  # the work folder of jobs/<id>: checkpoints/, model/ or adapter/, and the zip
    resume_checkpoint: Path | None = None  # a checkpoint-<step> folder to continue from (a resumed job)
    watch_prompts: tuple[str, ...] = ()  # generated at every eval, stored as JobSample rows
    tokenizer_model_path: Path | None = None  # pretrain: reuse this model's tokenizer
    trust_remote_code: bool = False  # only for a base model an admin marked as trusted

    @property
    def method_spec(self) -> Method:
        return registry.method(self.method)

    @property
    def objective_spec(self) -> Objective:
        return registry.objective(self.objective)

    def objective_settings(self, kind: type[S]) -> S:
        """The objective's settings as the class the recipe expects (DpoSettings in the DPO recipe, ...)."""
        assert isinstance(self.objective_config, kind), f"objective {self.objective} has no {kind.__name__}"
        return self.objective_config

    def method_settings(self, kind: type[S]) -> S:
        assert isinstance(self.method_config, kind), f"method {self.method} has no {kind.__name__}"
        return self.method_config

    def summary(self) -> dict[str, Any]:
        """The job's inputs as JSON-ready values (for resolved_config and model cards)."""
        return {
            "kind": self.kind,
            "method": self.method,
            "objective": self.objective,
            "architecture": self.architecture,
            "hyperparameters": self.hp.model_dump(),
            "method_config": self.method_config.model_dump(),
            "objective_config": self.objective_config.model_dump(),
            "dataset": self.dataset.summary(),
            "validation_dataset": self.validation_dataset.summary() if self.validation_dataset else None,
            "base_model": {"name": self.base_model_name, "path": str(self.base_model_path)}
            if self.base_model_path
            else None,
        }


# Kept when a job's work folder is emptied: an export of one of its checkpoints may be running in another worker
# process on this machine (it cleans up its own folder).
KEPT_IN_WORK = ("exports",)


@contextmanager
def job_workspace(job_id: int) -> Iterator[None]:
    """One run of job `job_id` in this worker process. What the cache hands out inside (the base model, the resume
    checkpoint, the datasets) stays pinned until the run ends. With remote storage the job's work folder
    (checkpoints, weights, zips: everything is in the bucket once written) starts empty and goes when the run
    ends, however it ends: a resume reads from the bucket, and nothing else counts that folder against the disk.
    With local storage the work folder is the stored folder: left alone."""
    with pinned():
        clear_work(job_id)
        try:
            yield
        finally:
            clear_work(job_id)


def clear_work(job_id: int) -> None:
    """Remote storage: remove job `job_id`'s work folder (but what `KEPT_IN_WORK` names)."""
    if is_local():
        return
    folder = work_path(f"jobs/{job_id}")
    if not folder.is_dir():
        return
    for entry in folder.iterdir():
        if entry.name in KEPT_IN_WORK:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
    with suppress(OSError):  # an export's folder is still there
        folder.rmdir()


def load_context(job_id: int) -> JobContext:
    """Snapshot job `job_id`, its dataset and base model (local copies of what is stored remotely, fetched once the
    session is closed); create its output directory."""
    context, keys = _snapshot(job_id)
    cache = get_cache()
    return replace(
        context,
        base_model_path=cache.tree(keys["base"]) if keys["base"] else None,
        resume_checkpoint=cache.tree(keys["resume"]) if keys["resume"] else None,
        tokenizer_model_path=cache.tree(keys["tokenizer"]) if keys["tokenizer"] else None,
    )


def _snapshot(job_id: int) -> tuple[JobContext, dict[str, str | None]]:
    with session_scope() as s:
        job = s.get(Job, job_id)
        if job is None:
            raise LookupError(f"job {job_id} does not exist")
        dataset = s.get(Dataset, job.dataset_id)
        if dataset is None:
            raise LookupError(f"dataset {job.dataset_id} of job {job_id} does not exist")
        validation = s.get(Dataset, job.validation_dataset_id) if job.validation_dataset_id is not None else None
        if job.validation_dataset_id is not None and validation is None:
            raise LookupError(f"validation dataset {job.validation_dataset_id} of job {job_id} does not exist")
        base = s.get(Model, job.base_model_id) if job.base_model_id is not None else None
        tokenizer_model = s.get(Model, job.tokenizer_model_id) if job.tokenizer_model_id is not None else None
        if job.kind == "finetune" and base is None:
            raise LookupError(f"base model {job.base_model_id} of job {job_id} does not exist")
        method, objective = registry.method(job.method), registry.objective(job.objective)
        # Old-style keys still in `hyperparameters` (a row written by hand, or by a test) count as settings.
        stored = job.hyperparameters or {}
        legacy = registry.split_legacy(stored, method.name, objective.name)
        method_config = method.settings.model_validate({**legacy.method, **(job.method_config or {})})
        assert isinstance(method_config, MethodSettings)
        keys = {
            "base": base.path if base else None,
            "resume": job.resume_checkpoint,
            "tokenizer": tokenizer_model.path if tokenizer_model else None,
        }
        return JobContext(
            job_id=job.id,
            owner_id=job.owner_id,
            name=job.name,
            kind=job.kind,
            method=method.name,
            objective=objective.name,
            architecture=job.architecture,
            hp=Hyperparameters.model_validate(legacy.hyperparameters),
            method_config=method_config,
            objective_config=objective.settings.model_validate({**legacy.objective, **(job.objective_config or {})}),
            dataset=DatasetRef.of(dataset),
            validation_dataset=DatasetRef.of(validation) if validation else None,
            base_model_name=base.name if base else None,
            base_model_path=None,
            output_dir=work_dir(f"jobs/{job.id}"),
            watch_prompts=tuple(job.watch_prompts or ()),
            trust_remote_code=bool(base and (base.details or {}).get("trust_remote_code")),
        ), keys
