"""What every recipe shares: the metrics of each logged point, gradient accumulation and checkpointing, the ETA."""

import math
from datetime import timedelta
from typing import Any

import numpy as np
import pytest
import torch
from sqlalchemy import select
from transformers import AutoModelForCausalLM, EvalPrediction

from backend.db import JobMetric, session_scope, utcnow
from backend.job.lifecycle import claim_job, update_job
from backend.job.service import eta_seconds
from tests.workers.support import PRETRAIN_HP, Pretrained, Seed, create_job, get_job, sft_job
from workers import training
from workers.context import load_context
from workers.eval_metrics import bits_per_byte, perplexity, token_accuracy, tokens_per_byte
from workers.examples import load_tokenizer
from workers.recipes import finetune
from workers.tasks import run_job

BLOCK = PRETRAIN_HP["batch_size"] * PRETRAIN_HP["max_length"]  # input tokens of one full pretraining step


def metric_rows(job_id: int) -> list[dict[str, float]]:
    with session_scope() as s:
        rows = s.scalars(select(JobMetric).where(JobMetric.job_id == job_id).order_by(JobMetric.id))
        return [{"step": m.step, **m.values} for m in rows]


# --- every logged point ------------------------------------------------------------------------------------------


def test_training_points_carry_tokens_throughput_and_memory(pretrained: Pretrained) -> None:
    points = [r for r in metric_rows(pretrained.job_id) if "loss" in r]
    assert len(points) == PRETRAIN_HP["max_steps"]
    for point in points:
        assert {"learning_rate", "grad_norm", "epoch", "tokens_per_second", "memory_mb"} <= point.keys()
        assert point["tokens_per_second"] > 0 and point["memory_mb"] > 10  # the process's RSS on CPU
    seen = [p["tokens_seen"] for p in points]
    supervised = [p["supervised_tokens"] for p in points]
    assert seen == sorted(seen) and len(set(seen)) == len(seen)  # cumulative, and every step adds tokens
    read = [b - a for a, b in zip([0.0, *seen], seen, strict=False)]
    learned = [b - a for a, b in zip([0.0, *supervised], supervised, strict=False)]
    # An epoch's last batch holds the leftover blocks.
    blocks, batch = get_job(pretrained.job_id).resolved_config["train_blocks"], PRETRAIN_HP["batch_size"]
    per_epoch = math.ceil(blocks / batch)
    rows = [batch if (i + 1) % per_epoch else blocks - batch * (per_epoch - 1) for i in range(len(read))]
    # Packed blocks hold max_length tokens (but the corpus's tail), so a step reads about rows x max_length.
    length = PRETRAIN_HP["max_length"]
    assert all((r - 1) * length < n <= r * length for r, n in zip(rows, read, strict=True))
    # Each block's first token is the one position that predicts nothing (the labels shift by one), so a
    # step learns from one token fewer per block than it reads.
    assert [r - n for r, n in zip(read, learned, strict=True)] == rows


def test_eval_points_carry_perplexity(pretrained: Pretrained) -> None:
    evals = [r for r in metric_rows(pretrained.job_id) if "eval_loss" in r]
    assert evals
    for point in evals:
        assert point["eval_perplexity"] == pytest.approx(math.exp(point["eval_loss"]))
        assert "eval_token_accuracy" not in point  # raw text: the accuracy is an SFT metric
        # Bits per byte: the same loss in a unit that does not depend on the tokenizer; a byte-level BPE
        # token spells at least one byte, so it is at most loss / ln 2.
        assert 0 < point["eval_bits_per_byte"] <= point["eval_loss"] / math.log(2) + 1e-9


def test_tokens_per_byte_counts_the_predicted_tokens_and_the_text_they_spell(pretrained: Pretrained) -> None:
    tokenizer = load_tokenizer(pretrained.model_path)
    ids = tokenizer("The lion sleeps tonight", add_special_tokens=False)["input_ids"]
    # Raw text: every token but the first is predicted. SFT: only the answer's tokens (-100 elsewhere).
    answer = [-100, -100, *ids[2:]]
    examples = [{"input_ids": ids, "labels": ids}, {"input_ids": ids, "labels": answer}]
    spelled = len(tokenizer.decode(ids[1:]).encode()) + len(tokenizer.decode(ids[2:]).encode())
    assert tokens_per_byte(examples, tokenizer) == pytest.approx((len(ids) - 1 + len(ids) - 2) / spelled)
    assert tokens_per_byte([{"input_ids": ids, "labels": [-100] * len(ids)}], tokenizer) is None
    assert bits_per_byte(math.log(2), 0.5) == pytest.approx(0.5)


def test_perplexity_refuses_what_overflows() -> None:
    assert perplexity(0.0) == 1.0
    assert perplexity(2.0) == pytest.approx(7.389, rel=1e-3)
    assert perplexity(800.0) is None  # exp(800) is beyond a float
    assert perplexity(math.nan) is None


def test_token_accuracy_compares_each_prediction_with_the_next_label() -> None:
    ignore = -100
    # Position t's argmax predicts label t+1. Row 0: 2 supervised positions, 1 right; row 1 (padded with -100
    # by the Trainer, predictions too): 1 supervised position, right. Position 0's label never counts.
    predictions = np.array([[5, 7, 9, 1], [4, 3, ignore, ignore]])
    labels = np.array([[ignore, ignore, 7, 2], [8, 4, ignore, ignore]])
    result = token_accuracy(EvalPrediction(predictions=predictions, label_ids=labels))
    assert result == {"token_accuracy": pytest.approx(2 / 3)}
    nothing = token_accuracy(EvalPrediction(predictions=predictions, label_ids=np.full_like(labels, ignore)))
    assert nothing == {}


# --- gradient accumulation ---------------------------------------------------------------------------------------


def test_total_steps_divides_the_batches_by_accumulation(seed: Seed) -> None:
    job_id = create_job(
        seed,
        kind="pretrain",
        architecture="tiny",
        hyperparameters={"epochs": 2, "batch_size": 4, "gradient_accumulation_steps": 3},
    )
    ctx = load_context(job_id)
    # 41 examples → 11 batches of 4 → 4 optimizer steps per epoch (3 + 3 + 3 + 2 batches) → 8 in two epochs.
    assert training.total_steps(ctx, 41) == 8
    assert training.total_steps(ctx, 36) == 6  # 9 batches → 3 steps per epoch
    args = training.training_arguments(ctx, n_train=41, n_eval=0)
    assert args.gradient_accumulation_steps == 3


def test_accumulation_takes_one_optimizer_step_per_group_of_batches(seed: Seed) -> None:
    hp = {**PRETRAIN_HP, "max_steps": None, "epochs": 1, "gradient_accumulation_steps": 2, "eval_steps": 1000}
    job_id = create_job(seed, kind="pretrain", architecture="tiny", hyperparameters=hp)
    assert run_job(job_id) == "succeeded"
    job = get_job(job_id)
    blocks = job.resolved_config["train_blocks"]
    expected = math.ceil(math.ceil(blocks / hp["batch_size"]) / 2)
    assert job.total_steps == job.current_step == expected
    points = [r for r in metric_rows(job_id) if "loss" in r]
    assert [p["step"] for p in points] == list(range(1, expected + 1))
    # One epoch read every training block once, in two micro-batches per step; each block's first token
    # predicts nothing, so input and supervised tokens differ by exactly the number of blocks.
    assert points[-1]["tokens_seen"] - points[-1]["supervised_tokens"] == blocks
    assert 2 * BLOCK - PRETRAIN_HP["max_length"] < points[0]["tokens_seen"] <= 2 * BLOCK  # 2 micro-batches


# --- gradient checkpointing --------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["full", "lora"])
def test_gradient_checkpointing_trains(
    seed: Seed, pretrained: Pretrained, method: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[str, Any] = {}

    def capture(*args: Any, **kwargs: Any) -> Any:
        trainer, callback = training.build_trainer(*args, **kwargs)
        seen["trainer"] = trainer
        return trainer, callback

    monkeypatch.setattr(finetune, "build_trainer", capture)
    hp = {"max_steps": 4, "max_length": 64, "batch_size": 4, "learning_rate": 2e-3, "gradient_checkpointing": True}
    job_id = sft_job(seed, pretrained, method, hyperparameters=hp)
    assert run_job(job_id) == "succeeded"
    model = seen["trainer"].model
    assert model.is_activation_checkpointing  # the Trainer turned it on from the job's arguments
    assert all(math.isfinite(r["loss"]) for r in metric_rows(job_id) if "loss" in r)
    base = AutoModelForCausalLM.from_pretrained(pretrained.model_path).state_dict()
    if method == "lora":
        lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
        assert lora_b and all(p.abs().sum() > 0 for p in lora_b)  # B starts at zero; gradients reached it
    else:
        tuned = model.state_dict()
        assert any(not torch.equal(tuned[k], base[k]) for k in base)


# --- the ETA of a resumed job ------------------------------------------------------------------------------------


def test_eta_measures_the_pace_of_this_attempt(seed: Seed) -> None:
    job_id = create_job(seed, kind="pretrain", architecture="tiny", hyperparameters={"max_steps": 100})
    update_job(job_id, current_step=40, total_steps=100)  # where a paused attempt stopped
    assert claim_job(job_id, "eta-worker")
    job = get_job(job_id)
    assert job.start_step == 40
    # 10 steps in this attempt took 20 s: the 50 steps left take 100 s. Counting from step 0 would claim
    # 50 steps in 20 s and promise 20 s.
    job.current_step, job.started_at = 50, utcnow() - timedelta(seconds=20)
    assert eta_seconds(job, utcnow()) == pytest.approx(100, abs=1)
    job.current_step = 40  # no step of this attempt yet: no pace to extrapolate from
    assert eta_seconds(job, utcnow()) is None
