"""KTO on the pretrained tiny model, from OpenAI-messages conversations each with a boolean `label` (the unpaired
preference layout): LoRA (reference = the base with the adapter disabled) and full (a frozen copy)."""

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from backend.db import Job, Model, session_scope
from tests.workers.support import FIXTURES, Pretrained, Seed, add_dataset, create_job, studio_env
from tests.workers.test_recipe_dpo import events, metric_rows
from tests.workers.test_recipe_finetune import generate, unzip_artifact
from workers.examples import CHATML_TEMPLATE, load_tokenizer
from workers.recipes.kto import unpaired_example, with_kl_completions
from workers.tasks import run_job

KTO_HP = {
    "max_steps": 10,
    "max_length": 128,
    "batch_size": 8,
    "learning_rate": 2e-3,
    "logging_steps": 1,
    "eval_steps": 5,
    "validation_fraction": 0.2,
    "kto_beta": 0.1,
    "seed": 0,
}
WATCH = "Tell me about the owl."


def unpaired_file(directory: Path, name: str = "kto_messages.jsonl") -> Path:
    """The DPO fixture's pairs unpaired: each prompt once with its good answer (label true) and once with its bad
    one (label false), as OpenAI messages, with an `id` column nothing reads."""
    lines = []
    for number, line in enumerate((FIXTURES / "preference.jsonl").read_text().splitlines()):
        pair = json.loads(line)
        for answer, label in ((pair["chosen"], True), (pair["rejected"], False)):
            messages = [{"role": "user", "content": pair["prompt"]}, {"role": "assistant", "content": answer}]
            lines.append(json.dumps({"id": f"{number}-{label}", "messages": messages, "label": label}))
    path = directory / name
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def unpaired_dataset(seed: Seed, tmp_path_factory: pytest.TempPathFactory) -> int:
    with studio_env(seed.data_dir):
        return add_dataset(seed.user_id, unpaired_file(tmp_path_factory.mktemp("kto")))


@pytest.fixture(scope="module")
def lora_job(seed: Seed, pretrained: Pretrained, unpaired_dataset: int) -> Iterator[int]:
    with studio_env(seed.data_dir):
        job_id = create_job(
            seed,
            kind="finetune",
            method="lora",
            objective="kto",
            dataset_id=unpaired_dataset,
            base_model_id=pretrained.model_id,
            hyperparameters={**KTO_HP, "lora_r": 4, "lora_alpha": 8},
            watch_prompts=[WATCH],
        )
        assert run_job(job_id) == "succeeded", events(job_id)
        yield job_id


def test_the_answer_is_the_final_assistant_turn(pretrained: Pretrained) -> None:
    tokenizer = load_tokenizer(pretrained.model_path)
    record = {
        "prompt": [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": "Tell me about the fox."},
        ],
        "completion": [{"role": "assistant", "content": "The fox ran."}],
        "label": False,
    }
    example, truncated, fit = unpaired_example(tokenizer, record, max_length=256)
    assert example is not None and not truncated and example["label"] is False
    prompt = tokenizer.decode(example["prompt_ids"])
    # The earlier assistant turn is context; the rated answer starts after the final turn's header.
    assert "Hello." in prompt and prompt.endswith("<|im_start|>assistant\n")
    assert tokenizer.decode(example["completion_ids"]) == "The fox ran.<|endoftext|>"
    assert fit == len(example["prompt_ids"]) + 1
    cut, truncated, _ = unpaired_example(tokenizer, record, max_length=len(example["prompt_ids"]) + 2)
    assert cut is not None and truncated and len(cut["completion_ids"]) == 2
    assert unpaired_example(tokenizer, record, max_length=len(example["prompt_ids"]))[0] is None


def test_kl_completions_rotate_within_each_batch() -> None:
    examples = [{"prompt_ids": [i], "completion_ids": [10 + i], "label": True} for i in range(5)]
    kl = [e["KL_completion_ids"][0] for e in with_kl_completions(examples, batch_size=2)]
    # Batches [0, 1], [2, 3], [4]: each prompt meets its batch neighbour's answer, never one from another batch.
    assert kl == [11, 10, 13, 12, 14]


def test_lora_kto_logs_loss_rewards_and_kl(lora_job: int) -> None:
    rows = metric_rows(lora_job)
    train_rows = [r for r in rows if "loss" in r]
    assert len(train_rows) == KTO_HP["max_steps"] // KTO_HP["logging_steps"]
    assert all(
        {"rewards/chosen", "rewards/rejected", "logps/chosen", "logps/rejected", "kl"} <= r.keys() for r in train_rows
    )
    # At step 1 the adapter is still zero, so policy = reference: every log-ratio and the KL estimate are 0, and
    # each answer's loss is 1 - sigmoid(0) = 0.5.
    assert train_rows[0]["loss"] == pytest.approx(0.5, abs=1e-4)
    assert train_rows[0]["kl"] == pytest.approx(0.0, abs=1e-4)
    assert train_rows[-1]["loss"] < train_rows[0]["loss"]
    # The desirable answers gained on the reference, the undesirable ones lost.
    assert train_rows[-1]["rewards/chosen"] > train_rows[-1]["rewards/rejected"]
    evals = [r for r in rows if "eval_loss" in r]
    assert evals and all({"eval_rewards/chosen", "eval_rewards/rejected", "eval_kl"} <= r.keys() for r in evals)
    with session_scope() as s:
        job = s.get(Job, lora_job)
        assert job is not None and job.final_eval_loss is not None
        config = job.resolved_config
    assert (config["train_examples"], config["eval_examples"]) == (64, 16)
    assert config["desirable"] + config["undesirable"] == 64 and config["desirable"] > 0 < config["undesirable"]
    log = events(lora_job)
    assert any(f"{config['desirable']} desirable, {config['undesirable']} undesirable" in m for m in log)
    assert any("reference = the base (adapter disabled)" in m for m in log)


def test_lora_kto_adapter_moved_reloads_and_generates(lora_job: int, pretrained: Pretrained, tmp_path: Path) -> None:
    names = unzip_artifact(lora_job, "adapter.zip", tmp_path)
    # One adapter: no copy of trl's "ref" adapter in a subfolder.
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "README.md"} <= names
    assert all("/" not in n for n in names)
    lora_b = {k: v for k, v in load_file(tmp_path / "adapter_model.safetensors").items() if "lora_B" in k}
    assert lora_b and all(v.abs().sum() > 0 for v in lora_b.values())  # PEFT starts every B at zero
    card = (tmp_path / "README.md").read_text()
    assert "objective `kto`" in card and "Final rewards/chosen" in card and "kto_training_answers" in card

    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    assert tokenizer.chat_template == CHATML_TEMPLATE  # the layout the answers were trained in
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(pretrained.model_path), tmp_path)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": WATCH}], tokenize=False, add_generation_prompt=True
    )
    generate(model, tokenizer, prompt)


def test_full_kto_writes_a_new_base_model(
    seed: Seed, pretrained: Pretrained, unpaired_dataset: int, tmp_path: Path
) -> None:
    job_id = create_job(
        seed,
        kind="finetune",
        method="full",
        objective="kto",
        dataset_id=unpaired_dataset,
        base_model_id=pretrained.model_id,
        hyperparameters={**KTO_HP, "max_steps": 3, "eval_steps": 3, "learning_rate": 1e-4},
    )
    assert run_job(job_id) == "succeeded", events(job_id)
    first = next(r for r in metric_rows(job_id) if "loss" in r)
    # The frozen copy equals the policy at step 1: the loss starts at exactly 0.5 here too.
    assert first["loss"] == pytest.approx(0.5, abs=1e-4) and "rewards/chosen" in first
    assert any("reference = a frozen copy of the base" in m for m in events(job_id))
    with session_scope() as s:
        registered = s.query(Model).filter(Model.job_id == job_id).one()
    names = unzip_artifact(job_id, "model.zip", tmp_path)
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md"} <= names
    assert registered.path == f"jobs/{job_id}/model"
    tuned = AutoModelForCausalLM.from_pretrained(tmp_path).state_dict()
    base = AutoModelForCausalLM.from_pretrained(pretrained.model_path).state_dict()
    assert any(not torch.equal(tuned[k], base[k]) for k in base)
