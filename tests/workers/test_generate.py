"""Playground generation on the worker: a base model, a LoRA job's adapter and one of its checkpoints answer,
each streamed into its row in pieces that match a plain greedy `generate`; so do prompt and prefix tuning
adapters; a classifier answers with a label."""

import itertools
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, PreTrainedTokenizerBase

import workers.generate as gen
from backend.db import Generation, User, session_scope
from backend.job.checkpoints import list_checkpoints
from backend.playground.lifecycle import append_output
from backend.playground.schemas import GenerationCreate
from backend.playground.service import create_generation
from tests.workers.support import FIXTURES, Pretrained, Seed, add_dataset, create_job, sft_job, studio_env
from workers.examples import format_prompt, load_tokenizer
from workers.prompt_learning import fix_generation
from workers.tasks import run_job

LORA_HP = {
    "max_steps": 10,
    "max_length": 64,
    "batch_size": 8,
    "learning_rate": 2e-3,
    "logging_steps": 5,
    "checkpoint_steps": 5,
    "validation_fraction": 0.1,
    "seed": 0,
    "lora_r": 4,
    "lora_alpha": 8,
}
NEW_TOKENS = 24
# The start of a fable the base was pretrained on: it goes on for more than a few words.
BASE_PROMPT = "A hungry fox walked along a garden wall"


@pytest.fixture(scope="module")
def lora_job(seed: Seed, pretrained: Pretrained) -> Iterator[int]:
    # Module scope is set up before the per-test `worker_env` fixture, so it switches the environment itself.
    with studio_env(seed.data_dir):
        job_id = create_job(
            seed,
            kind="finetune",
            method="lora",
            objective="sft",
            dataset_id=seed.alpaca_dataset_id,
            base_model_id=pretrained.model_id,
            hyperparameters=LORA_HP,
        )
        assert run_job(job_id) == "succeeded"
        yield job_id


def queue_generation(seed: Seed, **body: Any) -> int:
    """A generation row as POST /api/generations creates it (the same checks and defaults)."""
    with session_scope() as s:
        user = s.get(User, seed.user_id)
        assert user is not None
        data = GenerationCreate.model_validate({"max_new_tokens": NEW_TOKENS, **body})
        return create_generation(s, user=user, data=data).id


def row(generation_id: int) -> Generation:
    with session_scope() as s:
        found = s.get(Generation, generation_id)
        assert found is not None
        return found


@pytest.fixture
def snapshots(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The stored output after each flush: what an SSE client reading the row would have seen."""
    seen: list[str] = []

    def record(generation_id: int, text: str) -> None:
        append_output(generation_id, text)
        if text:
            seen.append(row(generation_id).output)

    monkeypatch.setattr(gen, "append_output", record)
    monkeypatch.setattr(gen, "FLUSH_SECONDS", 0.0)  # flush every piece, so the test sees the stream's steps
    return seen


def greedy(model: Any, tokenizer: PreTrainedTokenizerBase, text: str, *, chat: bool) -> str:
    """The reference: one plain `generate` call, decoded at the end."""
    inputs = tokenizer(text, return_tensors="pt", add_special_tokens=not chat)
    with torch.no_grad():
        out = model.generate(
            **inputs,
            max_new_tokens=NEW_TOKENS,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=gen.stop_ids(tokenizer),
        )
    decoded = tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert isinstance(decoded, str)
    return decoded


def test_base_model_answer_streams_into_the_row(seed: Seed, pretrained: Pretrained, snapshots: list[str]) -> None:
    gid = queue_generation(seed, prompt=BASE_PROMPT, model_id=pretrained.model_id)
    assert row(gid).params["chat"] is False  # a pretrained tokenizer has no chat template: raw text
    assert gen.generate(gid) == "done"
    done = row(gid)
    assert done.status == "done" and done.error is None and done.finished_at is not None
    tokenizer = load_tokenizer(pretrained.model_path)
    model = AutoModelForCausalLM.from_pretrained(pretrained.model_path)
    assert done.output == greedy(model, tokenizer, BASE_PROMPT, chat=False)
    assert done.output.strip()
    # The answer arrived in several growing pieces, not in one write at the end.
    assert len(snapshots) > 2
    assert all(b.startswith(a) for a, b in itertools.pairwise(snapshots))
    assert snapshots[-1] == done.output
    # A second delivery of the task finds the row claimed and does nothing.
    assert gen.generate(gid) == "skipped"


def test_adapter_and_checkpoint_answers(seed: Seed, pretrained: Pretrained, lora_job: int) -> None:
    prompt = "Reverse the word: cat"
    checkpoints = [c.name for c in list_checkpoints(lora_job)]
    assert "checkpoint-5" in checkpoints
    final = queue_generation(seed, prompt=prompt, job_id=lora_job)
    early = queue_generation(seed, prompt=prompt, job_id=lora_job, checkpoint="checkpoint-5")
    assert row(final).params["chat"] is True  # an SFT job is asked in the layout it trained on
    assert gen.generate(final) == "done" and gen.generate(early) == "done"

    tokenizer = load_tokenizer(seed.data_dir / "jobs" / str(lora_job) / "adapter")
    text = format_prompt(tokenizer, prompt)
    for gid, weights in ((final, "adapter"), (early, "checkpoints/checkpoint-5")):
        base = AutoModelForCausalLM.from_pretrained(pretrained.model_path)
        model = PeftModel.from_pretrained(base, seed.data_dir / "jobs" / str(lora_job) / weights)
        assert row(gid).output == greedy(model, tokenizer, text, chat=True), weights
        assert row(gid).status == "done"


def test_the_loaded_model_is_reused(seed: Seed, pretrained: Pretrained, lora_job: int) -> None:
    first = queue_generation(seed, prompt="Reverse the word: dog", job_id=lora_job)
    assert gen.generate(first) == "done"
    loaded = gen._cache
    assert loaded is not None
    second = queue_generation(seed, prompt="Reverse the word: tree", job_id=lora_job, temperature=0.8, top_p=0.9)
    assert gen.generate(second) == "done"
    assert gen._cache is loaded  # same weights, same files: no second load
    assert row(second).params["temperature"] == 0.8


def test_a_job_without_weights_fails_with_the_reason(seed: Seed, pretrained: Pretrained) -> None:
    job_id = create_job(
        seed,
        kind="finetune",
        method="lora",
        objective="sft",
        dataset_id=seed.alpaca_dataset_id,
        base_model_id=pretrained.model_id,
    )  # queued, never run
    with session_scope() as s:
        g = Generation(owner_id=seed.user_id, job_id=job_id, prompt="hi", params={"max_new_tokens": 4, "chat": True})
        s.add(g)
        s.flush()
        gid = g.id
    assert gen.generate(gid) == "failed"
    failed = row(gid)
    assert failed.status == "failed" and failed.finished_at is not None
    assert failed.error is not None and "no trained adapter or model yet" in failed.error


def test_a_classifier_answers_with_a_label(seed: Seed, pretrained: Pretrained) -> None:
    dataset_id = add_dataset(seed.user_id, FIXTURES / "sentiment.csv")
    job_id = create_job(
        seed,
        kind="finetune",
        method="lora",
        objective="classification",
        dataset_id=dataset_id,
        base_model_id=pretrained.model_id,
        hyperparameters={"max_steps": 4, "max_length": 64, "batch_size": 8, "validation_fraction": 0.25, "seed": 0},
    )
    assert run_job(job_id) == "succeeded"
    gid = queue_generation(seed, prompt="The owl was happy all day.", job_id=job_id)
    assert row(gid).params["task"] == "classify"
    assert gen.generate(gid) == "done"
    assert re.fullmatch(r"(negative|positive) \(p=(0\.\d\d|1\.00)\)", row(gid).output), row(gid).output


def test_model_directories_are_told_apart(pretrained: Pretrained, lora_job: int, seed: Seed) -> None:
    from backend.playground.service import weights_kind

    jobs = Path(seed.data_dir) / "jobs" / str(lora_job)
    assert weights_kind(pretrained.model_path) == "model"
    assert weights_kind(jobs / "adapter") == "adapter"
    assert weights_kind(jobs / "checkpoints" / "checkpoint-5") == "adapter"
    assert weights_kind(jobs) is None


# --- prompt and prefix tuning: what they learned sits before the input, not in the weights -------------------------

VIRTUAL_TOKENS = 8


@pytest.fixture(scope="module")
def prompt_learning_jobs(seed: Seed, pretrained: Pretrained) -> Iterator[dict[str, int]]:
    """A trained prompt tuning job and a prefix tuning one, by method."""
    hp = {"max_steps": 6, "max_length": 64, "batch_size": 4, "learning_rate": 3e-2, "validation_fraction": 0.0}
    jobs = {}
    with studio_env(seed.data_dir):
        for method in ("prompt_tuning", "prefix_tuning"):
            jobs[method] = sft_job(
                seed,
                pretrained,
                method,
                hyperparameters=hp,
                method_config={"num_virtual_tokens": VIRTUAL_TOKENS},
            )
            assert run_job(jobs[method]) == "succeeded"
        yield jobs


@pytest.mark.parametrize("method", ["prompt_tuning", "prefix_tuning"])
def test_prompt_and_prefix_tuning_adapters_answer(
    seed: Seed, pretrained: Pretrained, prompt_learning_jobs: dict[str, int], method: str
) -> None:
    prompt = "Reverse the word: cat"
    job_id = prompt_learning_jobs[method]
    gid = queue_generation(seed, prompt=prompt, job_id=job_id)
    assert gen.generate(gid) == "done", row(gid).error
    adapter = seed.data_dir / "jobs" / str(job_id) / "adapter"
    tokenizer = load_tokenizer(adapter)
    text = format_prompt(tokenizer, prompt)
    base = AutoModelForCausalLM.from_pretrained(pretrained.model_path)
    plain = greedy(base, tokenizer, text, chat=True)
    adapted = PeftModel.from_pretrained(base, adapter)
    fix_generation(adapted)  # tests/workers/test_peft_methods.py holds its answers equal to forward passes
    expected = greedy(adapted, tokenizer, text, chat=True)
    assert row(gid).output == expected
    assert expected != plain  # the learned tokens (or prefixes) were in the answer's context


def test_a_long_prompt_leaves_room_for_the_virtual_tokens(
    seed: Seed, pretrained: Pretrained, prompt_learning_jobs: dict[str, int]
) -> None:
    adapter = seed.data_dir / "jobs" / str(prompt_learning_jobs["prompt_tuning"]) / "adapter"
    tokenizer = load_tokenizer(adapter)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(pretrained.model_path), adapter)
    context = model.config.max_position_embeddings
    long_prompt = "the fox ran " * context
    inputs, max_new = gen.prompt_inputs(model, tokenizer, long_prompt, chat=False, max_new_tokens=NEW_TOKENS)
    assert max_new == NEW_TOKENS
    # The soft prompt's positions, the prompt's and the answer's together fit the context the base was trained on.
    assert VIRTUAL_TOKENS + inputs["input_ids"].shape[1] + max_new == context
    plain = AutoModelForCausalLM.from_pretrained(pretrained.model_path)
    assert (
        gen.prompt_inputs(plain, tokenizer, long_prompt, chat=False, max_new_tokens=NEW_TOKENS)[0]["input_ids"].shape[1]
        + NEW_TOKENS
        == context
    )
