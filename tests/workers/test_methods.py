"""How much of the base a fine-tune trains: freeze (top layers), LoRA's options (rsLoRA, DoRA, target modules),
and QLoRA's refusal on a worker without CUDA."""

import json
import math
import zipfile
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from sqlalchemy import select
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from backend.db import Artifact, session_scope
from tests.support import stored
from tests.workers.support import Pretrained, Seed, get_job, messages, sft_job
from workers.methods import freeze_bottom
from workers.tasks import run_job

HP = {"max_steps": 6, "max_length": 64, "batch_size": 4, "learning_rate": 2e-3, "validation_fraction": 0.0}


def finetune_job(seed: Seed, pretrained: Pretrained, method: str, **hp: object) -> int:
    return sft_job(seed, pretrained, method, hyperparameters={**HP, **hp})


def unzip(job_id: int, name: str, into: Path) -> Path:
    with session_scope() as s:
        artifact = s.scalars(select(Artifact).where(Artifact.job_id == job_id, Artifact.name == name)).one()
    with zipfile.ZipFile(stored(artifact.path)) as zf:
        zf.extractall(into)
    return into


# --- freeze --------------------------------------------------------------------------------------------------------


def test_freeze_trains_only_the_top_layers_norm_and_head(seed: Seed, pretrained: Pretrained, tmp_path: Path) -> None:
    job_id = finetune_job(seed, pretrained, "freeze", freeze_trainable_layers=1)
    assert run_job(job_id) == "succeeded"
    assert "freeze: training the top 1 of 2 layers" in messages(job_id)
    tuned = AutoModelForCausalLM.from_pretrained(unzip(job_id, "model.zip", tmp_path)).state_dict()
    base = AutoModelForCausalLM.from_pretrained(pretrained.model_path).state_dict()
    changed = {k for k in base if not torch.equal(tuned[k], base[k])}
    # The bottom layer and the embedding never move; the top layer, the final norm and the head do.
    assert not any(k.startswith(("model.layers.0.", "model.embed_tokens")) for k in changed)
    assert {"model.norm.weight", "lm_head.weight"} <= changed
    assert any(k.startswith("model.layers.1.") for k in changed)
    trainable = sum(v.numel() for k, v in base.items() if k.startswith(("model.layers.1.", "model.norm", "lm_head")))
    assert get_job(job_id).resolved_config["parameters"]["trainable"] == trainable


def test_freeze_finds_the_final_norm_of_other_architectures() -> None:
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=3, n_embd=32, n_head=2, vocab_size=64, n_positions=32))
    assert freeze_bottom(gpt2, 1, ("lm_head",)) == 1
    trains = {n for n, p in gpt2.named_parameters() if p.requires_grad}
    assert {"transformer.ln_f.weight", "transformer.h.2.attn.c_attn.weight"} <= trains
    assert not any(n.startswith(("transformer.h.0.", "transformer.h.1.", "transformer.wpe")) for n in trains)
    # Asking for more layers than exist trains them all.
    llama = LlamaForCausalLM(
        LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, vocab_size=64)
    )
    assert freeze_bottom(llama, 5, ("lm_head",)) == 2
    frozen = {n for n, p in llama.named_parameters() if not p.requires_grad}
    assert frozen == {"model.embed_tokens.weight"}


# --- LoRA options --------------------------------------------------------------------------------------------------


def test_rslora_dora_on_chosen_modules(seed: Seed, pretrained: Pretrained, tmp_path: Path) -> None:
    r, alpha = 4, 8
    job_id = finetune_job(
        seed,
        pretrained,
        "lora",
        lora_r=r,
        lora_alpha=alpha,
        lora_use_rslora=True,
        lora_use_dora=True,
        lora_target_modules=["q_proj", "v_proj"],
    )
    assert run_job(job_id) == "succeeded"
    adapter = unzip(job_id, "adapter.zip", tmp_path / "adapter")
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["use_rslora"] and config["use_dora"]
    assert set(config["target_modules"]) == {"q_proj", "v_proj"}

    weights = load_file(adapter / "adapter_model.safetensors")
    assert {k.split(".")[-3] for k in weights if "lora_A" in k} == {"q_proj", "v_proj"}  # no other module adapted
    # DoRA keeps a magnitude per output feature of each adapted weight, apart from the LoRA direction.
    magnitudes = [k for k in weights if "lora_magnitude_vector" in k]
    assert len(magnitudes) == 2 * 2  # q and v in each of the 2 layers
    assert all(weights[k].abs().sum() > 0 for k in weights if "lora_B" in k)  # B starts at zero: it trained

    base = AutoModelForCausalLM.from_pretrained(pretrained.model_path)
    model = PeftModel.from_pretrained(base, adapter)
    q_proj = model.base_model.model.model.layers[0].self_attn.q_proj
    assert q_proj.scaling["default"] == pytest.approx(alpha / math.sqrt(r))  # rsLoRA: alpha/sqrt(r), not alpha/r


def test_unknown_target_module_fails_and_names_the_linear_layers(seed: Seed, pretrained: Pretrained) -> None:
    job_id = finetune_job(seed, pretrained, "lora", lora_target_modules=["q_proj", "query_key_value"])
    assert run_job(job_id) == "failed"
    error = get_job(job_id).error or ""
    assert "query_key_value" in error and "q_proj" not in error.split(";")[0]
    assert "k_proj" in error and "down_proj" in error  # what the user could have asked for


# --- QLoRA ---------------------------------------------------------------------------------------------------------


@pytest.mark.skipif(torch.cuda.is_available(), reason="this worker has CUDA; the refusal is for CPU workers")
def test_qlora_on_a_cpu_worker_fails_with_a_clear_message(seed: Seed, pretrained: Pretrained) -> None:
    job_id = finetune_job(seed, pretrained, "qlora")
    assert run_job(job_id) == "failed"
    job = get_job(job_id)
    assert job.error == "qlora needs a CUDA GPU with bitsandbytes; this worker has none (use lora)"
    assert job.current_step == 0
    assert messages(job_id)[-1].startswith("failed: RuntimeError: qlora needs a CUDA GPU")
