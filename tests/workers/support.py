"""Helpers shared by the worker tests: the environment switch, seeded rows and queued jobs."""

import hashlib
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from backend.config import get_settings
from backend.dataset.formats import summarize
from backend.db import Dataset, Job, JobEvent, User, session_scope
from tests.support import reset_process_state

FIXTURES = Path(__file__).parent / "fixtures"

PRETRAIN_HP = {
    "max_steps": 60,
    "max_length": 64,
    "batch_size": 8,
    # A tiny model on a tiny corpus tolerates (and needs) more than the 3e-4 default to move in 60 steps.
    "learning_rate": 2e-3,
    "warmup_steps": 5,
    "logging_steps": 1,
    "eval_steps": 20,
    "validation_fraction": 0.1,
    "seed": 0,
}


@contextmanager
def studio_env(data_dir: Path) -> Iterator[None]:
    """Point settings and the engine at `data_dir` (fresh caches on the way in and out)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("STUDIO_DATA_DIR", str(data_dir))
        mp.setenv("STUDIO_DATABASE_URL", f"sqlite:///{data_dir / 'studio.db'}")
        mp.setenv("STUDIO_REDIS_URL", "")  # no live fan-out: the database holds every row anyway
        mp.setenv("STUDIO_WORKER_NAME", "")
        reset_process_state()
        try:
            yield
        finally:
            reset_process_state()


@dataclass(frozen=True)
class Seed:
    data_dir: Path
    user_id: int
    text_dataset_id: int
    alpaca_dataset_id: int


@dataclass(frozen=True)
class Pretrained:
    job_id: int
    model_id: int
    model_path: Path


def add_user(email: str) -> int:
    """A user row (no password: worker tests and benchmarks never log in)."""
    with session_scope() as s:
        user = User(email=email, password_hash="not-a-hash")
        s.add(user)
        s.flush()
        return user.id


def add_dataset(owner_id: int, source: Path) -> int:
    """Store a fixture file the way an upload would: a copy under data_dir plus its Dataset row."""
    target = get_settings().path("datasets") / source.name
    shutil.copyfile(source, target)
    summary = summarize(target, source.name)
    with session_scope() as s:
        row = Dataset(
            owner_id=owner_id,
            name=source.stem,
            filename=source.name,
            path=str(target),
            size_bytes=target.stat().st_size,
            sha256=hashlib.sha256(target.read_bytes()).hexdigest(),
            format=summary.format,
            shape=summary.shape,
            record_count=summary.record_count,
            options=summary.options,
        )
        s.add(row)
        s.flush()
        return row.id


def create_job(seed: Seed, **fields: Any) -> int:
    """A queued job row, as the web app would create it."""
    values: dict[str, Any] = {
        "owner_id": seed.user_id,
        "name": f"test-{fields.get('kind', 'job')}",
        "method": "full",
        "objective": "causal_lm",
        "dataset_id": seed.text_dataset_id,
        "hyperparameters": {},
        **fields,
    }
    with session_scope() as s:
        job = Job(**values)
        s.add(job)
        s.flush()
        return job.id


def sft_job(seed: Seed, pretrained: Pretrained, method: str, **fields: Any) -> int:
    """A queued SFT fine-tune of the session's tiny pretrained model on the alpaca fixture with `method`."""
    return create_job(
        seed,
        kind="finetune",
        method=method,
        objective="sft",
        dataset_id=seed.alpaca_dataset_id,
        base_model_id=pretrained.model_id,
        **fields,
    )


def get_job(job_id: int) -> Job:
    """The job row as it is now (detached, read-only use)."""
    with session_scope() as s:
        job = s.get(Job, job_id)
        assert job is not None
        return job


def messages(job_id: int) -> list[str]:
    """The job's event log lines, oldest first."""
    with session_scope() as s:
        return [e.message for e in s.scalars(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id))]
