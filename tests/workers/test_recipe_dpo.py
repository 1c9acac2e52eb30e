"""DPO on the pretrained tiny model: LoRA (reference = the base with the adapter disabled) and full (a frozen copy)."""

import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from sqlalchemy import select
from transformers import AutoModelForCausalLM, AutoTokenizer

from backend.db import Job, JobEvent, JobMetric, JobSample, Model, session_scope
from backend.job import lifecycle
from tests.support import stored
from tests.workers.support import FIXTURES, Pretrained, Seed, add_dataset, create_job, studio_env
from tests.workers.test_recipe_finetune import generate, unzip_artifact
from workers import metrics
from workers.examples import CHATML_TEMPLATE, load_tokenizer
from workers.recipes.dpo import pair_example
from workers.tasks import run_job

DPO_HP = {
    "max_steps": 12,
    "max_length": 128,
    "batch_size": 8,
    "learning_rate": 2e-3,
    "logging_steps": 1,
    "eval_steps": 6,
    "validation_fraction": 0.2,
    "dpo_beta": 0.1,
    "seed": 0,
}
WATCH = "Tell me about the owl."


def metric_rows(job_id: int) -> list[dict[str, float]]:
    with session_scope() as s:
        rows = s.scalars(select(JobMetric).where(JobMetric.job_id == job_id).order_by(JobMetric.step))
        return [m.values for m in rows]


def events(job_id: int) -> list[str]:
    with session_scope() as s:
        return [e.message for e in s.scalars(select(JobEvent).where(JobEvent.job_id == job_id))]


@pytest.fixture(scope="module")
def preference_dataset(seed: Seed) -> int:
    with studio_env(seed.data_dir):
        return add_dataset(seed.user_id, FIXTURES / "preference.jsonl")


@pytest.fixture(scope="module")
def lora_job(seed: Seed, pretrained: Pretrained, preference_dataset: int) -> Iterator[int]:
    with studio_env(seed.data_dir):
        job_id = create_job(
            seed,
            kind="finetune",
            method="lora",
            objective="dpo",
            dataset_id=preference_dataset,
            base_model_id=pretrained.model_id,
            hyperparameters={**DPO_HP, "lora_r": 4, "lora_alpha": 8},
            watch_prompts=[WATCH],
        )
        assert run_job(job_id) == "succeeded", events(job_id)
        yield job_id


def test_pairs_share_the_prompt_and_end_with_eos(pretrained: Pretrained) -> None:
    tokenizer = load_tokenizer(pretrained.model_path)
    record = {"prompt": "Tell me about the fox.", "chosen": "The fox ran.", "rejected": "The FOX!"}
    example, truncated, shortest = pair_example(tokenizer, record, max_length=64)
    assert example is not None and not truncated and shortest == len(example["prompt_ids"]) + 1
    text = tokenizer.decode(example["prompt_ids"])
    # The fallback chat layout, up to the assistant's header; the answers' shared "The" belongs to the answers.
    assert text.endswith("<|im_start|>assistant\n") and "Tell me about the fox." in text
    assert tokenizer.decode(example["chosen_ids"]) == "The fox ran.<|endoftext|>"
    assert tokenizer.decode(example["rejected_ids"]) == "The FOX!<|endoftext|>"
    cut, truncated, _ = pair_example(tokenizer, record, max_length=len(example["prompt_ids"]) + 2)
    assert cut is not None and truncated and len(cut["chosen_ids"]) == len(cut["rejected_ids"]) == 2
    assert pair_example(tokenizer, record, max_length=len(example["prompt_ids"])) == (None, True, shortest)


def test_lora_dpo_logs_loss_and_rewards(lora_job: int) -> None:
    rows = metric_rows(lora_job)
    train_rows = [r for r in rows if "loss" in r]
    assert len(train_rows) == DPO_HP["max_steps"] // DPO_HP["logging_steps"]
    assert all(
        {"rewards/accuracies", "rewards/margins", "rewards/chosen", "rewards/rejected"} <= r.keys() for r in train_rows
    )
    # At step 1 the adapter is still zero, so policy = reference: both log-ratios are 0 and the loss is ln 2.
    assert train_rows[0]["loss"] == pytest.approx(math.log(2), abs=1e-4)
    assert train_rows[-1]["loss"] < train_rows[0]["loss"]
    assert train_rows[-1]["rewards/margins"] > 0
    evals = [r for r in rows if "eval_loss" in r]
    assert evals and all({"eval_rewards/accuracies", "eval_rewards/margins"} <= r.keys() for r in evals)
    assert evals[-1]["eval_rewards/accuracies"] > 0.5  # held-out pairs: the preference generalizes
    with session_scope() as s:
        job = s.get(Job, lora_job)
        assert job is not None and job.final_eval_loss is not None
        config = job.resolved_config
        samples = list(s.scalars(select(JobSample).where(JobSample.job_id == lora_job)))
    assert (config["train_examples"], config["eval_examples"]) == (32, 8)
    assert 0 < config["parameters"]["trainable"] < config["parameters"]["total"] / 10
    assert any("reference = the base (adapter disabled)" in m for m in events(lora_job))
    assert samples and all(s.prompt == WATCH for s in samples)


def test_lora_dpo_adapter_moved_reloads_and_generates(lora_job: int, pretrained: Pretrained, tmp_path: Path) -> None:
    unzip_artifact(lora_job, "merged.zip", tmp_path / "merged")
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "merged") is not None  # the adapter folded in
    names = unzip_artifact(lora_job, "adapter.zip", tmp_path)
    # One adapter: no copy of trl's "ref" adapter in a subfolder.
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "README.md"} <= names
    assert all("/" not in n for n in names)
    lora_b = {k: v for k, v in load_file(tmp_path / "adapter_model.safetensors").items() if "lora_B" in k}
    assert lora_b and all(v.abs().sum() > 0 for v in lora_b.values())  # PEFT starts every B at zero
    card = (tmp_path / "README.md").read_text()
    assert "objective `dpo`" in card and "preference" in card and "Final rewards/accuracies" in card

    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    assert tokenizer.chat_template == CHATML_TEMPLATE  # the layout the pairs were trained in
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(pretrained.model_path), tmp_path)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": WATCH}], tokenize=False, add_generation_prompt=True
    )
    generate(model, tokenizer, prompt)


@pytest.mark.parametrize("method", ["full", "freeze"])
def test_full_and_freeze_dpo_on_conversations_write_a_new_base_model(
    seed: Seed, pretrained: Pretrained, tmp_path: Path, method: str
) -> None:
    chats = add_dataset(seed.user_id, FIXTURES / "preference_chat.jsonl")
    job_id = create_job(
        seed,
        kind="finetune",
        method=method,
        objective="dpo",
        dataset_id=chats,
        base_model_id=pretrained.model_id,
        hyperparameters={**DPO_HP, "max_steps": 4, "eval_steps": 2, "learning_rate": 1e-4},
    )
    assert run_job(job_id) == "succeeded", events(job_id)
    rows = metric_rows(job_id)
    first = next(r for r in rows if "loss" in r)  # after the base model's evaluation at step 0
    # The frozen copy equals the policy at step 1: the loss starts at exactly ln 2 here too.
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-4) and "rewards/margins" in first
    assert any("eval_rewards/accuracies" in r for r in rows)
    assert any("reference = a frozen copy of the base" in m for m in events(job_id))
    with session_scope() as s:
        registered = s.scalars(select(Model).where(Model.job_id == job_id)).one()
    names = unzip_artifact(job_id, "model.zip", tmp_path)
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md"} <= names
    assert registered.path == f"jobs/{job_id}/model"

    tuned = AutoModelForCausalLM.from_pretrained(tmp_path)
    base = AutoModelForCausalLM.from_pretrained(pretrained.model_path)
    tuned_weights, base_weights = tuned.state_dict(), base.state_dict()
    assert any(not torch.equal(tuned_weights[k], base_weights[k]) for k in base_weights)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    generate(tuned, tokenizer, tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False))


@pytest.mark.slow
def test_lora_dpo_pauses_and_resumes_from_its_checkpoint(
    seed: Seed, pretrained: Pretrained, preference_dataset: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    hp = {**DPO_HP, "max_steps": 6, "eval_steps": 3, "checkpoint_steps": 2}
    job_id = create_job(
        seed,
        kind="finetune",
        method="lora",
        objective="dpo",
        dataset_id=preference_dataset,
        base_model_id=pretrained.model_id,
        hyperparameters=hp,
    )
    real_beat = lifecycle.beat

    def pause_at_step_3(job: int, *, step: int, total_steps: int | None) -> str:
        if step == 3:  # what POST /pause does, at a known step
            lifecycle.update_job(job, pause_requested=True)
        return real_beat(job, step=step, total_steps=total_steps)

    monkeypatch.setattr(metrics, "HEARTBEAT_SECONDS", 0.0)
    monkeypatch.setattr(metrics, "beat", pause_at_step_3)
    assert run_job(job_id) == "paused", events(job_id)
    with session_scope() as s:
        job = s.get(Job, job_id)
        assert job is not None and job.resume_checkpoint is not None
        assert job.resume_checkpoint.endswith("checkpoint-3")
    assert sorted(n.name for n in stored(job.resume_checkpoint).iterdir() if n.is_dir()) == []  # one adapter, no "ref/"

    monkeypatch.setattr(metrics, "beat", real_beat)
    lifecycle.update_job(job_id, status="queued", attempt_base=1)  # as POST /resume: lease.requeue
    assert run_job(job_id) == "succeeded", events(job_id)
    with session_scope() as s:
        losses = [m.step for m in s.scalars(select(JobMetric).where(JobMetric.job_id == job_id)) if "loss" in m.values]
    assert losses == list(range(1, hp["max_steps"] + 1))  # the curve continues, no step twice
    assert any(m.startswith("resuming from checkpoint-3") for m in events(job_id))
