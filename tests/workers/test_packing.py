"""Packed SFT batches (several examples per row, each attending only to itself) and the evaluation budget."""

from dataclasses import fields
from typing import Any

import pytest
import torch
from peft import LoraConfig, get_peft_model
from sqlalchemy import select
from torch import nn
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from backend.db import JobEvent, JobMetric, session_scope
from backend.job.schemas import Hyperparameters
from tests.workers.support import Pretrained, Seed, sft_job
from workers import training
from workers.context import JobContext
from workers.data import PadCollator
from workers.examples import IGNORE_INDEX, Example, build_sft_examples, load_tokenizer
from workers.packing import (
    REAL_TOKENS,
    PackingCollator,
    owners_of,
    pack_rows,
    packing_preserves_losses,
    per_example_losses,
)
from workers.supervised_logits import supervised_logits_match, supervised_only
from workers.tasks import run_job
from workers.training import DEFAULT_EVALS, MIN_EVAL_SAMPLE, eval_plan

HP = {"max_steps": 6, "max_length": 64, "batch_size": 8, "learning_rate": 2e-3, "logging_steps": 1, "seed": 0}


def examples(lengths: list[int], supervised_from: int = 2) -> list[Example]:
    """Examples of the given lengths with distinct token ids; loss on positions from `supervised_from`."""
    out: list[Example] = []
    for n, length in enumerate(lengths):
        ids = [(7 * n + 3 * i) % 120 + 5 for i in range(length)]
        out.append({"input_ids": ids, "labels": [IGNORE_INDEX] * supervised_from + ids[supervised_from:]})
    return out


def tiny_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=0,
    )
    return LlamaForCausalLM(config)


def test_rows_hold_every_example_once_within_the_row_length() -> None:
    lengths = [60, 10, 33, 64, 5, 31, 20, 2]
    rows = pack_rows(lengths, 64)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in row) <= 64 for row in rows)
    assert len(rows) < len(lengths)  # fewer rows than a padded batch
    assert pack_rows([80, 3], 64) == [[0], [1]]  # a longer example still gets a row of its own
    # First fit fills a row to 48 and leaves the last nearly empty; spread over as many rows, none passes 40.
    lengths = [30, 7, 12, 25, 3, 18, 9, 40]
    rows = pack_rows(lengths, 48)
    assert len(rows) == 4 and max(sum(lengths[i] for i in row) for row in rows) == 40


def test_packed_rows_restart_positions_and_never_predict_across_examples() -> None:
    batch = PackingCollator(pad_token_id=0, row_length=12)(examples([6, 5, 9]))
    assert batch["input_ids"].shape == (2, 11)  # [9] and [6, 5]: the second row holds two examples
    positions, labels, real = batch["position_ids"], batch["labels"], batch[REAL_TOKENS]
    assert positions[1].tolist() == [0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4]
    assert positions[0].tolist() == [*range(9), 0, 1]  # the padding tail is a sequence of its own
    assert real[0].tolist() == [1] * 9 + [0, 0]
    assert labels[1, 6] == IGNORE_INDEX  # the first example's last token predicts nothing of the second
    assert (labels[0, 9:] == IGNORE_INDEX).all()
    assert owners_of(batch, 0).tolist() == [[0] * 9 + [-1, -1], [1] * 6 + [2] * 5]


@pytest.mark.parametrize("adapter", [False, True])
def test_packed_and_padded_batches_give_the_same_losses_and_gradients(adapter: bool) -> None:
    model: nn.Module = tiny_llama()
    if adapter:
        model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    batch_examples = examples([30, 7, 12, 25, 3, 18, 9, 40])
    padded = PadCollator(pad_token_id=0)(batch_examples)
    packed = PackingCollator(pad_token_id=0, row_length=48)(batch_examples)
    assert packed["input_ids"].numel() < padded["input_ids"].numel()
    # Per example: packed rows number examples row by row as placed, padded rows in batch order.
    order = [i for row in pack_rows([len(e["input_ids"]) for e in batch_examples], 48) for i in row]
    alone = per_example_losses(model, padded, owners_of(padded, 0))
    together = per_example_losses(model, packed, owners_of(packed, 0))
    assert together == pytest.approx([alone[i] for i in order], abs=1e-5)
    # The batch's loss (a mean over the same supervised tokens) and so every gradient are the same, with logits
    # at every position or at the supervised ones only (workers.supervised_logits).
    grads = []
    for batch in (padded, packed):
        for head in ({}, supervised_only(batch["labels"])):
            model.zero_grad()
            inputs = {k: v for k, v in batch.items() if k != REAL_TOKENS}
            out = model(**inputs, **head, use_cache=False)
            out.loss.backward()
            grads.append((out.loss.item(), [torch.clone(p.grad) for p in model.parameters() if p.grad is not None]))
            positions = (int(head["logits_to_keep"].sum()),) if head else batch["labels"].shape
            assert out.logits.shape[:-1] == positions
    for loss, grad in grads[1:]:
        assert loss == pytest.approx(grads[0][0], abs=1e-5)
        for a, b in zip(grads[0][1], grad, strict=True):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


class SlicesItsOwnWay(nn.Module):
    """A model whose forward picks logits by the older convention (`hidden[:, logits_to_keep]`)."""

    def __init__(self, inner: LlamaForCausalLM) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, logits_to_keep: Any = 0, shift_labels: Any = None, **kwargs: Any) -> Any:
        if isinstance(logits_to_keep, torch.Tensor):
            logits_to_keep = int(logits_to_keep.sum())  # read as "the last n positions"
        return self.inner(**kwargs, logits_to_keep=logits_to_keep, shift_labels=shift_labels)


def test_logits_at_supervised_positions_only_are_checked_on_the_model() -> None:
    model = tiny_llama()
    batch = examples([20, 15, 12], supervised_from=6)
    ok, compared = supervised_logits_match(model, batch, pad_token_id=0)
    assert ok and "gap" in compared
    ok, compared = supervised_logits_match(SlicesItsOwnWay(model), batch, pad_token_id=0)
    assert not ok
    # Pretraining rows supervise every position: nothing to skip, nothing to check.
    assert supervised_logits_match(model, examples([20, 15], supervised_from=0), pad_token_id=0) == (
        True,
        "no example masks any label",
    )


class IgnoresPositions(nn.Module):
    """A model whose attention does not see where packed examples begin: every row is one causal sequence."""

    def __init__(self, inner: LlamaForCausalLM) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, position_ids: torch.Tensor | None = None, **kwargs: Any) -> Any:
        return self.inner(**kwargs)


def test_the_check_refuses_a_model_that_lets_packed_examples_see_each_other() -> None:
    model = tiny_llama()
    batch = examples([20, 15, 12])
    assert packing_preserves_losses(model, batch, pad_token_id=0)[0]
    ok, compared = packing_preserves_losses(IgnoresPositions(model), batch, pad_token_id=0)
    assert not ok and "gap" in compared


def context(**hp: Any) -> JobContext:
    """Enough of a job's context for eval_plan: kind, method and hyperparameters."""
    unused: dict[str, Any] = {f.name: None for f in fields(JobContext)}
    return JobContext(**unused | {"kind": "finetune", "method": "lora", "hp": Hyperparameters(**hp)})


def test_a_short_run_with_a_large_held_out_set_evaluates_less() -> None:
    # 40 steps x 8 = 320 examples trained; 0.1 of that compute buys ~64 held-out examples at an adapter's cost.
    plan = eval_plan(context(max_steps=40, batch_size=8), n_train=600, n_eval=60)
    assert plan.total == 60 and plan.sample == MIN_EVAL_SAMPLE
    assert plan.every == 40  # nothing between the base evaluation and the final one on all 60
    assert "eval_budget" in plan.note
    # A long run keeps its ten evaluations on a sample of at most eval_max_examples.
    long = eval_plan(context(max_steps=5000, batch_size=8), n_train=600, n_eval=2000)
    assert long.sample == 256 and long.every == 5000 // DEFAULT_EVALS and not long.note
    # eval_steps chosen by the user is kept; only the sample is bounded.
    chosen = eval_plan(context(max_steps=40, batch_size=8, eval_steps=5), n_train=600, n_eval=300)
    assert (chosen.every, chosen.sample) == (5, 256)
    # trl's trainers read the whole set at each evaluation: only the count shrinks.
    whole = eval_plan(context(max_steps=40, batch_size=8), n_train=600, n_eval=60, sampled=False)
    assert whole.sample == 60 and whole.every == 40


def test_a_packed_run_trains_like_a_padded_one(
    seed: Seed, pretrained: Pretrained, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The packed run computes logits at supervised positions only; the padded one, as a plain Trainer, at all.
    heads: list[torch.Tensor] = []
    kept = training.supervised_only

    def counted(labels: torch.Tensor) -> dict[str, torch.Tensor]:
        heads.append(labels)
        return kept(labels)

    monkeypatch.setattr(training, "supervised_only", counted)
    runs = {}
    for packing in (True, False):
        job_id = sft_job(seed, pretrained, "lora", hyperparameters={**HP, "packing": packing, "eval_max_examples": 3})
        assert run_job(job_id) == "succeeded"
        if packing:
            assert heads, "the packed run computed logits at every position"
            monkeypatch.setattr(training, "supervised_logits", lambda *args: False)
        with session_scope() as s:
            points = [m.values for m in s.scalars(select(JobMetric).where(JobMetric.job_id == job_id))]
            events = [e.message for e in s.scalars(select(JobEvent).where(JobEvent.job_id == job_id))]
        runs[packing] = points, events
    (packed, packed_events), (padded, padded_events) = runs[True], runs[False]
    assert any(m.startswith("packing each batch into rows") for m in packed_events)
    assert not any("packing" in m for m in padded_events)
    # The same examples per step and the same loss: the first step's loss is the same; later ones drift only as
    # far as float sums in another order, amplified by Adam, take them.
    losses = [[p["loss"] for p in points if "loss" in p] for points in (packed, padded)]
    assert losses[0][0] == pytest.approx(losses[1][0], rel=1e-5)
    assert losses[0] == pytest.approx(losses[1], rel=1e-2)
    tokens = [[p["tokens_seen"] for p in points if "loss" in p] for points in (packed, padded)]
    assert tokens[0] == tokens[1]  # padding is not counted as tokens seen, packed or not
    # Evaluations during the run read a 3-example sample, the final one every held-out example.
    evals = [p for p in packed if "eval_loss" in p]
    assert [p["eval_examples"] for p in evals[:-1]] == [3.0] * (len(evals) - 1)
    assert evals[-1]["eval_examples"] > 3


def test_the_alpaca_fixture_packs_under_the_pretrained_tokenizer(pretrained: Pretrained) -> None:
    tokenizer = load_tokenizer(pretrained.model_path)
    records = [{"prompt": f"Question {i}?", "completion": "An answer " * (i % 7 + 1)} for i in range(16)]
    built, _ = build_sft_examples(tokenizer, records, 64)
    model = AutoModelForCausalLM.from_pretrained(pretrained.model_path)
    assert tokenizer.pad_token_id is not None
    assert packing_preserves_losses(model, built, tokenizer.pad_token_id)[0]
