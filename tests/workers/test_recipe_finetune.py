"""Fine-tuning the pretrained tiny model: LoRA on instructions (adapter.zip), full on text (model.zip)."""

import json
import math
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from sqlalchemy import select
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from backend.db import Artifact, Job, JobEvent, JobMetric, Model, session_scope
from tests.support import stored
from tests.workers.support import Pretrained, Seed, add_dataset, create_job, studio_env
from workers.examples import ALPACA_TEMPLATE, format_prompt
from workers.tasks import run_job

FINETUNE_HP = {
    "max_steps": 20,
    "max_length": 64,
    "batch_size": 8,
    "learning_rate": 2e-3,
    "logging_steps": 2,
    "validation_fraction": 0.1,
    "seed": 0,
}


def unzip_artifact(job_id: int, name: str, into: Path) -> set[str]:
    with session_scope() as s:
        artifact = s.scalars(select(Artifact).where(Artifact.job_id == job_id, Artifact.name == name)).one()
    with zipfile.ZipFile(stored(artifact.path)) as zf:
        zf.extractall(into)
        return set(zf.namelist())


def generate(model: Any, tokenizer: PreTrainedTokenizerBase, prompt: str) -> torch.Tensor:
    inputs = tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    assert out.shape[1] > inputs["input_ids"].shape[1]
    return out


@pytest.fixture(scope="module")
def lora_job(seed: Seed, pretrained: Pretrained) -> Iterator[int]:
    # Module scope is set up before the per-test `worker_env` fixture, so it switches the environment itself.
    with studio_env(seed.data_dir):
        yield _run_lora_job(seed, pretrained)


def _run_lora_job(seed: Seed, pretrained: Pretrained) -> int:
    job_id = create_job(
        seed,
        kind="finetune",
        method="lora",
        objective="sft",
        dataset_id=seed.alpaca_dataset_id,
        base_model_id=pretrained.model_id,
        hyperparameters={**FINETUNE_HP, "lora_r": 4, "lora_alpha": 8},
    )
    assert run_job(job_id) == "succeeded"
    return job_id


def test_lora_sft_records_the_run(lora_job: int) -> None:
    with session_scope() as s:
        job = s.get(Job, lora_job)
        assert job is not None and job.status == "succeeded"
        params = job.resolved_config["parameters"]
        assert 0 < params["trainable"] < params["total"] / 10  # a low-rank update, not the whole model
        assert job.resolved_config["base_model"]["path"].endswith("model")
        metrics = list(s.scalars(select(JobMetric).where(JobMetric.job_id == lora_job)))
        messages = [e.message for e in s.scalars(select(JobEvent).where(JobEvent.job_id == lora_job))]
    assert sum("loss" in m.values for m in metrics) == FINETUNE_HP["max_steps"] // FINETUNE_HP["logging_steps"]
    assert any(m.startswith("lora: training") for m in messages)
    assert not any("registered as base model" in m for m in messages)  # an adapter is not a base model


def test_lora_adapter_zip_loads_on_the_base_and_generates(
    lora_job: int, pretrained: Pretrained, tmp_path: Path
) -> None:
    names = unzip_artifact(lora_job, "adapter.zip", tmp_path)
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "README.md"} <= names
    assert all("/" not in n for n in names)
    assert json.loads((tmp_path / "adapter_config.json").read_text())["r"] == 4
    card = (tmp_path / "README.md").read_text()
    assert "tiny-fables" in card and "tasks_alpaca" in card and "Final eval loss" in card

    base = AutoModelForCausalLM.from_pretrained(pretrained.model_path)
    model = PeftModel.from_pretrained(base, tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    generate(model, tokenizer, ALPACA_TEMPLATE.format(prompt="Reverse the word: cat"))


def test_lora_weights_moved_from_their_init(lora_job: int, tmp_path: Path) -> None:
    unzip_artifact(lora_job, "adapter.zip", tmp_path)
    weights = load_file(tmp_path / "adapter_model.safetensors")
    lora_b = {k: v for k, v in weights.items() if "lora_B" in k}
    assert lora_b
    # PEFT starts every B at zero so the adapted model begins equal to the base; training must move it.
    assert all(v.abs().sum() > 0 for v in lora_b.values())


def test_full_causal_lm_finetune_writes_a_new_base_model(seed: Seed, pretrained: Pretrained, tmp_path: Path) -> None:
    job_id = create_job(
        seed,
        kind="finetune",
        method="full",
        objective="causal_lm",
        dataset_id=seed.text_dataset_id,
        base_model_id=pretrained.model_id,
        hyperparameters={**FINETUNE_HP, "max_steps": 8, "learning_rate": 1e-3},
    )
    assert run_job(job_id) == "succeeded"
    with session_scope() as s:
        job = s.get(Job, job_id)
        assert job is not None
        params = job.resolved_config["parameters"]
        assert params["trainable"] == params["total"]
        registered = s.scalars(select(Model).where(Model.job_id == job_id)).one()
    names = unzip_artifact(job_id, "model.zip", tmp_path)
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md"} <= names
    assert registered.path == f"jobs/{job_id}/model"

    tuned = AutoModelForCausalLM.from_pretrained(tmp_path)
    base = AutoModelForCausalLM.from_pretrained(pretrained.model_path)
    tuned_weights, base_weights = tuned.state_dict(), base.state_dict()
    assert any(not torch.equal(tuned_weights[k], base_weights[k]) for k in base_weights)
    generate(tuned, AutoTokenizer.from_pretrained(tmp_path), "The lion")


def test_lora_sft_evals_report_token_accuracy_and_perplexity(lora_job: int) -> None:
    with session_scope() as s:
        evals = [
            m.values
            for m in s.scalars(select(JobMetric).where(JobMetric.job_id == lora_job))
            if "eval_loss" in m.values
        ]
    assert evals
    for point in evals:
        assert 0.0 <= point["eval_token_accuracy"] <= 1.0
        assert point["eval_perplexity"] == pytest.approx(math.exp(point["eval_loss"]))


def test_merged_zip_generates_what_base_plus_adapter_generates(
    lora_job: int, pretrained: Pretrained, tmp_path: Path
) -> None:
    names = unzip_artifact(lora_job, "merged.zip", tmp_path / "merged")
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md"} <= names
    assert not any(n.startswith("adapter_") for n in names)  # a plain model: no peft needed to load it
    assert "merged into the base weights" in (tmp_path / "merged" / "README.md").read_text()
    unzip_artifact(lora_job, "adapter.zip", tmp_path / "adapter")

    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    assert merged.dtype == torch.float32
    adapted = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(pretrained.model_path), tmp_path / "adapter"
    )
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "merged")
    for prompt in ("Reverse the word: cat", "Name a colour."):
        text = ALPACA_TEMPLATE.format(prompt=prompt)
        assert torch.equal(generate(merged, tokenizer, text), generate(adapted, tokenizer, text))
    # The merge really holds the update: the merged weights differ from the base where LoRA adapted it.
    base = AutoModelForCausalLM.from_pretrained(pretrained.model_path).state_dict()
    q_proj = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(merged.state_dict()[q_proj], base[q_proj])


# A toy task a 1M-parameter model masters in a few dozen steps: a fixed short answer per instruction.
TOY_ANSWERS = {"Say yes.": "yes", "Say no.": "no", "Greet me.": "hello there", "Count to three.": "one two three"}


def test_generation_stops_at_eos_after_sft(seed: Seed, pretrained: Pretrained, tmp_path: Path) -> None:
    records = [{"prompt": p, "completion": c} for p, c in TOY_ANSWERS.items()] * 8
    source = tmp_path / "toy_answers.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in records))
    job_id = create_job(
        seed,
        kind="finetune",
        method="full",
        objective="sft",
        dataset_id=add_dataset(seed.user_id, source),
        base_model_id=pretrained.model_id,
        hyperparameters={**FINETUNE_HP, "max_steps": 100, "learning_rate": 3e-3, "validation_fraction": 0.0},
    )
    assert run_job(job_id) == "succeeded"
    unzip_artifact(job_id, "model.zip", tmp_path / "model")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "model")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "model")
    budget = 16
    for prompt, expected in TOY_ANSWERS.items():
        inputs = tokenizer(format_prompt(tokenizer, prompt), return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=budget, do_sample=False)
        new = out[0, inputs["input_ids"].shape[1] :].tolist()
        # The answer, then EOS, well inside the budget: SFT trained the stop, not only the words.
        assert new[-1] == tokenizer.eos_token_id and len(new) < budget, tokenizer.decode(new)
        assert tokenizer.decode(new, skip_special_tokens=True).strip() == expected
