"""Data parallel for real: the recipes in two CPU processes on gloo (torchrun), through the run_job task.

Rank 0 alone writes rows and files: every step is plotted once, one artifact is published. Both ranks stop
together on a cancel, and a rank's crash fails the job with that rank's own traceback.
"""

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from backend.config import get_settings
from backend.db import Artifact, JobMetric, Model, session_scope
from backend.job.lifecycle import update_job
from tests.workers.support import PRETRAIN_HP, Pretrained, Seed, create_job, get_job, messages
from workers.tasks import run_job

PROCESSES = 2


@pytest.fixture
def two_processes() -> Iterator[None]:
    """This worker trains with two processes (STUDIO_DATA_PARALLEL_PROCESSES, which the children inherit)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("STUDIO_DATA_PARALLEL_PROCESSES", str(PROCESSES))
        get_settings.cache_clear()
        yield
    get_settings.cache_clear()


def losses(job_id: int) -> list[tuple[int, float]]:
    """(step, loss) of every stored training point, in insertion order."""
    with session_scope() as s:
        rows = s.scalars(select(JobMetric).where(JobMetric.job_id == job_id).order_by(JobMetric.id))
        return [(m.step, m.values["loss"]) for m in rows if "loss" in m.values]


def artifact_names(job_id: int) -> list[str]:
    with session_scope() as s:
        return list(s.scalars(select(Artifact.name).where(Artifact.job_id == job_id)))


def assert_trained_once_per_step(job_id: int, steps: int) -> None:
    job = get_job(job_id)
    assert job.status == "succeeded", messages(job_id)
    assert job.resolved_config["world_size"] == PROCESSES
    assert job.device is not None and job.device.startswith(f"{PROCESSES} x cpu")
    points = losses(job_id)
    assert [step for step, _ in points] == list(range(1, steps + 1))  # once per step: rank 1 wrote nothing
    first, last = points[0][1], points[-1][1]
    assert last < first, points
    assert job.current_step == job.total_steps == steps


@pytest.mark.slow
def test_pretrain_in_two_processes(seed: Seed, two_processes: None) -> None:
    steps = 30
    hp = {**PRETRAIN_HP, "max_steps": steps, "eval_steps": 15}
    job_id = create_job(seed, kind="pretrain", architecture="tiny", name="dp-pretrain", hyperparameters=hp)
    assert run_job(job_id) == "succeeded", messages(job_id)
    assert_trained_once_per_step(job_id, steps)
    assert artifact_names(job_id) == ["model.zip"]
    log = messages(job_id)
    assert f"data parallel: {PROCESSES} processes" in " ".join(log)
    # Both ranks trained a tokenizer; one said so.
    assert sum(m.startswith("trained a byte-level BPE tokenizer") for m in log) == 1
    with session_scope() as s:
        assert len(list(s.scalars(select(Model).where(Model.job_id == job_id)))) == 1


@pytest.mark.slow
def test_lora_sft_in_two_processes(seed: Seed, pretrained: Pretrained, two_processes: None) -> None:
    steps = 12
    hp = {
        "max_steps": steps,
        "max_length": 64,
        "batch_size": 8,  # 4 sequences per process and step
        "learning_rate": 2e-3,
        "logging_steps": 1,
        "validation_fraction": 0.1,
        "seed": 0,
    }
    job_id = create_job(
        seed,
        kind="finetune",
        method="lora",
        objective="sft",
        dataset_id=seed.alpaca_dataset_id,
        base_model_id=pretrained.model_id,
        hyperparameters=hp,
    )
    assert run_job(job_id) == "succeeded", messages(job_id)
    assert_trained_once_per_step(job_id, steps)
    names = artifact_names(job_id)
    assert "adapter.zip" in names and len(names) == len(set(names))  # each published once (merged.zip too)


def test_a_batch_that_does_not_split_evenly_is_refused(seed: Seed, two_processes: None) -> None:
    hp = {**PRETRAIN_HP, "batch_size": 5}
    job_id = create_job(seed, kind="pretrain", architecture="tiny", hyperparameters=hp)
    assert run_job(job_id) == "failed"
    job = get_job(job_id)
    assert job.error is not None and "batch_size 5" in job.error and "multiple of 2" in job.error


# Slow only for the two processes' start (~15-25 s on 2 cores): the stop itself takes a second.
@pytest.mark.slow
def test_a_crashing_rank_fails_the_job_with_its_own_traceback(seed: Seed, two_processes: None, tmp_path: Path) -> None:
    with session_scope() as s:
        broken = Model(owner_id=seed.user_id, name="gone", source="local", path=str(tmp_path / "gone"), shared=True)
        s.add(broken)
        s.flush()
        model_id = broken.id
    job_id = create_job(
        seed,
        kind="finetune",
        method="lora",
        objective="sft",
        dataset_id=seed.alpaca_dataset_id,
        base_model_id=model_id,
        hyperparameters={"max_steps": 2, "batch_size": 2},
    )
    assert run_job(job_id) == "failed"
    job = get_job(job_id)
    assert job.error is not None and job.error.startswith("rank ")
    # The traceback is the child's (the recipe loading the base), not the launcher's.
    assert any("workers/recipes/finetune.py" in m for m in messages(job_id)), messages(job_id)


# Slow only for the two processes' start (~15-25 s on 2 cores): the stop itself takes a second.
@pytest.mark.slow
def test_cancel_stops_both_processes_together(seed: Seed, two_processes: None) -> None:
    hp = {**PRETRAIN_HP, "max_steps": 100_000, "eval_steps": 100_000}
    job_id = create_job(seed, kind="pretrain", architecture="tiny", hyperparameters=hp)
    result: list[str] = []
    runner = threading.Thread(target=lambda: result.append(run_job(job_id)), daemon=True)
    runner.start()
    deadline = time.monotonic() + 120
    while get_job(job_id).current_step < 3:
        assert time.monotonic() < deadline and runner.is_alive(), messages(job_id)
        time.sleep(0.2)
    update_job(job_id, cancel_requested=True)  # what POST /cancel does to a running job
    runner.join(timeout=60)  # both ranks see rank 0's answer within a heartbeat: no rank waits on another
    assert result == ["cancelled"], messages(job_id)
    job = get_job(job_id)
    assert job.status == "cancelled" and job.current_step < 1000
    assert any(m.startswith("stopping at step") for m in messages(job_id))


@pytest.mark.slow
def test_pause_then_resume_in_two_processes(seed: Seed, two_processes: None) -> None:
    steps = 120
    hp = {**PRETRAIN_HP, "max_steps": steps, "eval_steps": steps}
    job_id = create_job(seed, kind="pretrain", architecture="tiny", hyperparameters=hp)
    result: list[str] = []
    runner = threading.Thread(target=lambda: result.append(run_job(job_id)), daemon=True)
    runner.start()
    deadline = time.monotonic() + 120
    while get_job(job_id).current_step < 3:
        assert time.monotonic() < deadline and runner.is_alive(), messages(job_id)
        time.sleep(0.2)
    update_job(job_id, pause_requested=True)  # what POST /pause does
    runner.join(timeout=60)
    assert result == ["paused"], messages(job_id)
    paused = get_job(job_id)
    assert paused.resume_checkpoint is not None and paused.resume_checkpoint.endswith(f"-{paused.current_step}")

    update_job(job_id, status="queued")  # what POST /resume does
    assert run_job(job_id) == "succeeded", messages(job_id)
    # Each rank restored its own RNG state and the step count: the curve continues with no step twice.
    assert [step for step, _ in losses(job_id)] == list(range(1, steps + 1))
    assert get_job(job_id).resolved_config["world_size"] == PROCESSES
