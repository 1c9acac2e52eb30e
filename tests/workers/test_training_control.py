"""Pause and resume from a checkpoint, early stopping, the divergence guard and watch prompts, on the tiny preset."""

from typing import Any

import pytest
import torch
from sqlalchemy import select
from transformers import TrainerCallback

from backend.db import Job, JobEvent, JobMetric, JobSample, session_scope
from backend.job import lifecycle
from backend.job.checkpoints import list_checkpoints
from tests.workers.support import PRETRAIN_HP, Pretrained, Seed, create_job
from workers import metrics, training
from workers.recipes import pretrain
from workers.tasks import run_job

PAUSE_AT = 12
SHORT_HP = {**PRETRAIN_HP, "max_steps": 24, "eval_steps": 8, "checkpoint_steps": 8}


def get_job(job_id: int) -> Job:
    with session_scope() as s:
        job = s.get(Job, job_id)
        assert job is not None
        return job


def messages(job_id: int) -> list[str]:
    with session_scope() as s:
        return [e.message for e in s.scalars(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id))]


def loss_steps(job_id: int) -> list[int]:
    with session_scope() as s:
        rows = s.scalars(select(JobMetric).where(JobMetric.job_id == job_id).order_by(JobMetric.id))
        return [m.step for m in rows if "loss" in m.values]


def first_state(optimizer_state: dict[str, Any]) -> tuple[float, float]:
    """(step, exp_avg norm) of the optimizer's first parameter: enough to tell two states apart."""
    state = optimizer_state["state"][0]
    return float(state["step"]), float(state["exp_avg"].norm())


class OptimizerProbe(TrainerCallback):
    """Records the optimizer state as the loop starts, i.e. just after the Trainer loaded the checkpoint."""

    loaded: tuple[float, float] | None = None
    start_step: int | None = None

    def on_train_begin(self, args: Any, state: Any, control: Any, optimizer: Any = None, **kwargs: Any) -> None:
        OptimizerProbe.loaded = first_state(optimizer.state_dict())
        OptimizerProbe.start_step = state.global_step


@pytest.fixture
def beat_every_step(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics, "HEARTBEAT_SECONDS", 0.0)


def test_pause_then_resume_continues_from_the_checkpoint(
    seed: Seed, beat_every_step: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id = create_job(seed, kind="pretrain", architecture="tiny", hyperparameters=SHORT_HP)
    real_beat = lifecycle.beat

    def pause_at_step(job: int, *, step: int, total_steps: int | None) -> str:
        if step == PAUSE_AT:  # what POST /pause does, at a known step
            lifecycle.update_job(job, pause_requested=True)
        return real_beat(job, step=step, total_steps=total_steps)

    monkeypatch.setattr(metrics, "beat", pause_at_step)
    assert run_job(job_id) == "paused"
    job = get_job(job_id)
    assert job.status == "paused" and not job.pause_requested
    assert job.resume_checkpoint is not None and job.resume_checkpoint.endswith(f"checkpoint-{PAUSE_AT}")
    assert [c.step for c in list_checkpoints(job_id)] == [8, PAUSE_AT]  # keep_checkpoints=2
    assert loss_steps(job_id) == list(range(1, PAUSE_AT + 1))
    saved = torch.load(f"{job.resume_checkpoint}/optimizer.pt", weights_only=True)

    # Resume as POST /resume does, with a probe on the Trainer that the recipe builds.
    monkeypatch.setattr(metrics, "beat", real_beat)

    def probed(*args: Any, **kwargs: Any) -> Any:
        trainer, callback = training.build_trainer(*args, **kwargs)
        trainer.add_callback(OptimizerProbe())
        return trainer, callback

    monkeypatch.setattr(pretrain, "build_trainer", probed)
    lifecycle.update_job(job_id, status="queued", attempts=1)
    assert run_job(job_id) == "succeeded"
    assert OptimizerProbe.start_step == PAUSE_AT
    assert OptimizerProbe.loaded == pytest.approx(first_state(saved))
    assert first_state(saved)[0] == PAUSE_AT  # AdamW counted the steps before the pause
    steps = loss_steps(job_id)
    assert steps == list(range(1, SHORT_HP["max_steps"] + 1))  # the curve continues, no step twice
    assert any(m.startswith("resuming from checkpoint-12") for m in messages(job_id))
    assert [c.step for c in list_checkpoints(job_id)] == [16, 24]


def test_early_stopping_ends_the_run_when_eval_loss_stalls(seed: Seed) -> None:
    # A learning rate this small moves the eval loss by ~1e-7, below the 0.01% a gain must reach to count.
    hp = {**PRETRAIN_HP, "learning_rate": 1e-9, "warmup_steps": 0, "eval_steps": 5, "early_stopping_patience": 1}
    job_id = create_job(seed, kind="pretrain", architecture="tiny", hyperparameters=hp)
    assert run_job(job_id) == "succeeded"
    job = get_job(job_id)
    assert job.current_step == 10  # the first eval sets the best, the second fails to beat it
    assert any(m.startswith("early stopping at step 10") for m in messages(job_id))
    assert list_checkpoints(job_id)[-1].step == job.current_step  # the stopping point is kept


def test_divergence_guard_fails_a_run_with_a_huge_learning_rate(seed: Seed) -> None:
    hp = {**PRETRAIN_HP, "learning_rate": 1.0, "warmup_steps": 0}
    job_id = create_job(seed, kind="pretrain", architecture="tiny", hyperparameters=hp)
    assert run_job(job_id) == "failed"
    job = get_job(job_id)
    assert job.error is not None and ("spiked" in job.error or "became" in job.error)
    assert job.current_step < PRETRAIN_HP["max_steps"]
    assert "lower learning rate" in messages(job_id)[-1]


def test_watch_prompts_are_answered_at_every_eval(seed: Seed, pretrained: Pretrained) -> None:
    hp = {"max_steps": 4, "eval_steps": 2, "max_length": 64, "batch_size": 4, "validation_fraction": 0.2}
    job_id = create_job(
        seed,
        kind="finetune",
        objective="sft",
        method="lora",
        dataset_id=seed.alpaca_dataset_id,
        base_model_id=pretrained.model_id,
        hyperparameters=hp,
        watch_prompts=["Name a colour.", "Count to three."],
    )
    assert run_job(job_id) == "succeeded"
    with session_scope() as s:
        rows = list(s.scalars(select(JobSample).where(JobSample.job_id == job_id).order_by(JobSample.id)))
    assert [(r.step, r.prompt) for r in rows] == [
        (2, "Name a colour."),
        (2, "Count to three."),
        (4, "Name a colour."),
        (4, "Count to three."),
    ]
    assert all(isinstance(r.output, str) for r in rows)
