"""Pause and resume from a checkpoint, early stopping, the divergence guard and watch prompts, on the tiny preset."""

import copy
import math
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from sqlalchemy import select
from transformers import TrainerCallback

from backend.db import Artifact, JobMetric, JobSample, session_scope
from backend.job import lifecycle
from backend.job.checkpoints import list_checkpoints
from tests.support import stored
from tests.workers.support import PRETRAIN_HP, Pretrained, Seed, create_job, get_job, messages
from workers import metrics, training
from workers.recipes import finetune, pretrain
from workers.tasks import run_job

PAUSE_AT = 12
SHORT_HP = {**PRETRAIN_HP, "max_steps": 24, "eval_steps": 8, "checkpoint_steps": 8}


def loss_steps(job_id: int) -> list[int]:
    with session_scope() as s:
        rows = s.scalars(select(JobMetric).where(JobMetric.job_id == job_id).order_by(JobMetric.id))
        return [m.step for m in rows if "loss" in m.values]


def first_state(optimizer_state: dict[str, Any]) -> tuple[float, float]:
    """(step, exp_avg norm) of the optimizer's first parameter: enough to tell two states apart."""
    state = optimizer_state["state"][0]
    return float(state["step"]), float(state["exp_avg"].norm())


def assert_same_optimizer_state(loaded: dict[str, Any], saved: dict[str, Any]) -> None:
    """Every moment tensor and step count of every parameter, equal to the bit."""
    assert loaded["state"].keys() == saved["state"].keys() and saved["state"]
    for index, moments in saved["state"].items():
        assert loaded["state"][index].keys() == moments.keys()
        for name, value in moments.items():
            assert torch.equal(loaded["state"][index][name], value), (index, name)


class OptimizerProbe(TrainerCallback):
    """Records the optimizer state as the loop starts, i.e. just after the Trainer loaded the checkpoint."""

    loaded: tuple[float, float] | None = None
    full: dict[str, Any] | None = None
    start_step: int | None = None

    def on_train_begin(self, args: Any, state: Any, control: Any, optimizer: Any = None, **kwargs: Any) -> None:
        # A fresh run's optimizer has no state yet; a run from a checkpoint has the loaded one.
        OptimizerProbe.loaded = first_state(optimizer.state_dict()) if optimizer.state_dict()["state"] else None
        OptimizerProbe.full = copy.deepcopy(optimizer.state_dict())  # training updates the moments in place
        OptimizerProbe.start_step = state.global_step


def probe_trainers(monkeypatch: pytest.MonkeyPatch, recipe: Any) -> None:
    """Add an OptimizerProbe to the Trainer that `recipe` builds."""

    def probed(*args: Any, **kwargs: Any) -> Any:
        trainer, callback = training.build_trainer(*args, **kwargs)
        trainer.add_callback(OptimizerProbe())
        return trainer, callback

    monkeypatch.setattr(recipe, "build_trainer", probed)


def pause_at(monkeypatch: pytest.MonkeyPatch, step: int) -> None:
    """Ask the job to pause when it reports `step`, as POST /pause would at a known step."""
    real_beat = lifecycle.beat
    pause_step = step

    def beat(job: int, *, step: int, total_steps: int | None) -> str:
        if step == pause_step:
            lifecycle.update_job(job, pause_requested=True)
        return real_beat(job, step=step, total_steps=total_steps)

    monkeypatch.setattr(metrics, "beat", beat)


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
    saved = torch.load(stored(f"{job.resume_checkpoint}/optimizer.pt"), weights_only=True)

    # Resume as POST /resume does, with a probe on the Trainer that the recipe builds.
    monkeypatch.setattr(metrics, "beat", real_beat)

    def probed(*args: Any, **kwargs: Any) -> Any:
        trainer, callback = training.build_trainer(*args, **kwargs)
        trainer.add_callback(OptimizerProbe())
        return trainer, callback

    monkeypatch.setattr(pretrain, "build_trainer", probed)
    lifecycle.update_job(job_id, status="queued", attempt_base=1)  # as POST /resume: lease.requeue
    assert run_job(job_id) == "succeeded"
    assert OptimizerProbe.start_step == PAUSE_AT
    assert OptimizerProbe.loaded == pytest.approx(first_state(saved))
    assert OptimizerProbe.full is not None
    assert_same_optimizer_state(OptimizerProbe.full, saved)
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


def watch_job(seed: Seed, pretrained: Pretrained, max_steps: int) -> int:
    hp = {"max_steps": max_steps, "eval_steps": 2, "max_length": 64, "batch_size": 4, "validation_fraction": 0.2}
    return create_job(
        seed,
        kind="finetune",
        objective="sft",
        method="lora",
        dataset_id=seed.alpaca_dataset_id,
        base_model_id=pretrained.model_id,
        hyperparameters=hp,
        watch_prompts=["Name a colour.", "Count to three."],
    )


def watch_rows(job_id: int) -> list[JobSample]:
    with session_scope() as s:
        return list(s.scalars(select(JobSample).where(JobSample.job_id == job_id).order_by(JobSample.id)))


def test_watch_prompts_are_answered_at_every_eval(
    seed: Seed, pretrained: Pretrained, monkeypatch: pytest.MonkeyPatch
) -> None:
    # However slow a loaded machine makes the answers, none is skipped here (skipping is tested below).
    monkeypatch.setattr(metrics, "WATCH_FREE_SECONDS", math.inf)
    job_id = watch_job(seed, pretrained, max_steps=4)
    assert run_job(job_id) == "succeeded"
    rows = watch_rows(job_id)
    # Step 0 first: what the base model answers, before the fine-tune's first step.
    assert [(r.step, r.prompt) for r in rows] == [
        (0, "Name a colour."),
        (0, "Count to three."),
        (2, "Name a colour."),
        (2, "Count to three."),
        (4, "Name a colour."),
        (4, "Count to three."),
    ]
    assert all(isinstance(r.output, str) for r in rows)


def test_slow_watch_prompts_skip_evaluations_but_never_the_base_or_the_end(
    seed: Seed, pretrained: Pretrained, monkeypatch: pytest.MonkeyPatch
) -> None:
    answer_all = metrics.answers
    monkeypatch.setattr(metrics, "WATCH_FREE_SECONDS", 1.0)  # the same rule, in a shorter test

    def slow(*args: Any, **kwargs: Any) -> list[str]:
        time.sleep(metrics.WATCH_FREE_SECONDS + 0.5)  # longer than the free allowance and a tiny evaluation
        return answer_all(*args, **kwargs)

    monkeypatch.setattr(metrics, "answers", slow)
    job_id = watch_job(seed, pretrained, max_steps=8)
    assert run_job(job_id) == "succeeded"
    steps = sorted({r.step for r in watch_rows(job_id)})
    assert steps[0] == 0 and steps[-1] == 8 and 2 not in steps  # step 2's evaluation went without answers
    assert any("watch prompts took" in m for m in messages(job_id))


def test_lora_finetune_pauses_and_resumes_its_adapter(
    seed: Seed, pretrained: Pretrained, beat_every_step: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    hp = {
        "max_steps": 12,
        "max_length": 64,
        "batch_size": 4,
        "learning_rate": 2e-3,
        "checkpoint_steps": 4,
        "eval_steps": 6,
        "lora_r": 4,
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
    pause_at(monkeypatch, 6)
    assert run_job(job_id) == "paused"
    job = get_job(job_id)
    assert job.resume_checkpoint is not None and job.resume_checkpoint.endswith("checkpoint-6")
    checkpoint = list_checkpoints(job_id)[-1].path
    # A LoRA checkpoint holds the adapter and its optimizer state, not a copy of the frozen base.
    assert (checkpoint / "adapter_model.safetensors").is_file() and not (checkpoint / "model.safetensors").exists()
    saved = torch.load(checkpoint / "optimizer.pt", weights_only=True)

    monkeypatch.setattr(metrics, "beat", lifecycle.beat)
    probe_trainers(monkeypatch, finetune)
    lifecycle.update_job(job_id, status="queued", attempt_base=1)  # as POST /resume: lease.requeue
    assert run_job(job_id) == "succeeded"
    assert OptimizerProbe.start_step == 6
    assert OptimizerProbe.full is not None
    assert_same_optimizer_state(OptimizerProbe.full, saved)
    job = get_job(job_id)
    assert job.current_step == 12 and job.start_step == 6
    assert loss_steps(job_id) == list(range(1, 13))
    with session_scope() as s:
        evals = [
            m.step for m in s.scalars(select(JobMetric).where(JobMetric.job_id == job_id)) if "eval_loss" in m.values
        ]
        artifacts = {a.name for a in s.scalars(select(Artifact).where(Artifact.job_id == job_id))}
    assert evals == [0, 6, 12]  # the base model before the first step, then every eval_steps
    assert {"adapter.zip", "merged.zip"} <= artifacts


def learning_rates(job_id: int) -> dict[int, float]:
    with session_scope() as s:
        rows = s.scalars(select(JobMetric).where(JobMetric.job_id == job_id).order_by(JobMetric.id))
        return {m.step: m.values["learning_rate"] for m in rows if "learning_rate" in m.values}


SPIKE_AT = 10


class RollbackProbe(TrainerCallback):
    """At a run's start from a checkpoint, compares the model and optimizer with what that checkpoint holds."""

    checks: list[tuple[int, bool, bool, list[float]]] = []  # (step, same weights, same moments, lr ratios)

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        if not state.global_step:
            return
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        weights = load_file(folder / "model.safetensors")
        same_weights = all(torch.equal(t, weights[n]) for n, t in model.state_dict().items() if n in weights)
        saved = torch.load(folder / "optimizer.pt", weights_only=True)
        loaded = kwargs["optimizer"].state_dict()
        try:
            assert_same_optimizer_state(loaded, saved)
            same_moments = True
        except AssertionError:
            same_moments = False
        ratios = [g["lr"] / s["lr"] for g, s in zip(loaded["param_groups"], saved["param_groups"], strict=True)]
        RollbackProbe.checks.append((state.global_step, same_weights, same_moments, ratios))


@pytest.mark.slow
def test_a_divergence_rolls_back_to_the_last_checkpoint_at_half_the_learning_rate(
    seed: Seed, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The loss of step 10 is made infinite once; everything after that is the real rollback path.
    real_check = metrics.JobCallback._check_divergence

    def spike_once(self: metrics.JobCallback, args: Any, state: Any, control: Any, loss: float, sched: Any) -> None:
        if state.global_step == SPIKE_AT and not self.rollbacks_used:
            loss = math.inf
        real_check(self, args, state, control, loss, sched)

    monkeypatch.setattr(metrics.JobCallback, "_check_divergence", spike_once)

    def probed(*args: Any, **kwargs: Any) -> Any:
        trainer, callback = training.build_trainer(*args, **kwargs)
        trainer.add_callback(RollbackProbe())  # after the job's callback, which halves the lr on the way in
        return trainer, callback

    monkeypatch.setattr(pretrain, "build_trainer", probed)
    RollbackProbe.checks = []
    hp = {**SHORT_HP, "checkpoint_steps": 4, "divergence_rollbacks": 2}
    job_id = create_job(seed, kind="pretrain", architecture="tiny", hyperparameters=hp)
    assert run_job(job_id) == "succeeded"

    log = messages(job_id)
    lr = PRETRAIN_HP["learning_rate"]
    event = f"loss became inf at step {SPIKE_AT}: rolled back to checkpoint-8, learning rate {lr:.3g} → {lr / 2:.3g}"
    assert f"{event} (rollback 1 of 2)" in log
    assert get_job(job_id).current_step == SHORT_HP["max_steps"]
    # One point per step: the abandoned steps 9-10 keep their points, the re-run continues after them.
    assert loss_steps(job_id) == list(range(1, SHORT_HP["max_steps"] + 1))
    # The Trainer logs the lr a step used: linear warmup over 5 steps, then linear decay to 0 at step 24.
    warmup, total = PRETRAIN_HP["warmup_steps"], SHORT_HP["max_steps"]

    def scheduled(step: int) -> float:
        done = step - 1
        return lr * (done / warmup if done < warmup else (total - done) / (total - warmup))

    logged = learning_rates(job_id)
    assert all(logged[s] == pytest.approx(scheduled(s)) for s in range(1, SPIKE_AT + 1))
    assert all(logged[s] == pytest.approx(scheduled(s) / 2) for s in range(SPIKE_AT + 1, total + 1))
    # The re-run started from checkpoint-8: its weights, its optimizer moments, and half its learning rate.
    assert RollbackProbe.checks == [(8, True, True, [0.5, 0.5])]


@pytest.mark.slow
def test_a_huge_learning_rate_rolls_back_then_fails_when_rollbacks_run_out(seed: Seed) -> None:
    hp = {**PRETRAIN_HP, "learning_rate": 1.0, "warmup_steps": 0, "checkpoint_steps": 1, "divergence_rollbacks": 1}
    job_id = create_job(seed, kind="pretrain", architecture="tiny", hyperparameters=hp)
    status = run_job(job_id)
    log = messages(job_id)
    rollback = [m for m in log if "rolled back to checkpoint-" in m]
    assert len(rollback) == 1 and "learning rate 1 → 0.5 (rollback 1 of 1)" in rollback[0]
    job = get_job(job_id)
    if status == "failed":  # the halved rate diverged again
        assert job.error is not None and "all 1 rollbacks used" in job.error
    else:
        assert status == "succeeded" and job.current_step == PRETRAIN_HP["max_steps"]
    steps = loss_steps(job_id)
    assert steps == sorted(set(steps))  # never two points for a step
