"""The PEFT methods besides LoRA, end to end on the tiny pretrained model: prompt tuning, prefix tuning and IA³ train
only their own parameters, log the count the estimate predicts, and ship an adapter that reloads and generates
(IA³ also a merged model; the other two say why they have none)."""

import json
import re
import shutil
import zipfile
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from safetensors.torch import load_file
from sqlalchemy import select, update
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from backend.config import get_settings
from backend.db import Artifact, Job, JobMetric, JobSample, session_scope
from backend.job.checkpoints import list_checkpoints
from backend.method.registry import METHODS
from backend.method.settings import MethodSettings
from backend.method.shape import model_shape
from tests.support import stored
from tests.workers.support import Pretrained, Seed, get_job, messages, sft_job
from workers.prompt_learning import fix_generation
from workers.tasks import run_job
from workers.token_meter import MB

# Tiny runs: the file stays well under a minute. An eval every 2 steps (the step-0 one of the base included).
HP = {
    "max_steps": 4,
    "max_length": 64,
    "batch_size": 4,
    "learning_rate": 3e-2,  # soft prompts and scaling vectors need a larger step than LoRA to move in 4 steps
    "validation_fraction": 0.2,
    "eval_steps": 2,
    "logging_steps": 1,
}
WATCH = "Name a colour."


def peft_job(seed: Seed, pretrained: Pretrained, method: str, config: dict[str, Any], **hp: Any) -> int:
    return sft_job(
        seed,
        pretrained,
        method,
        hyperparameters={**HP, **hp},
        method_config=config,
        watch_prompts=[WATCH],
    )


def artifacts(job_id: int) -> dict[str, Path]:
    with session_scope() as s:
        return {a.name: stored(a.path) for a in s.scalars(select(Artifact).where(Artifact.job_id == job_id))}


def unzip(path: Path, into: Path) -> Path:
    with zipfile.ZipFile(path) as zf:
        zf.extractall(into)
    return into


def points(job_id: int) -> list[tuple[int, dict[str, float]]]:
    with session_scope() as s:
        rows = s.scalars(select(JobMetric).where(JobMetric.job_id == job_id).order_by(JobMetric.id))
        return [(r.step, dict(r.values)) for r in rows]


def base_model(pretrained: Pretrained) -> PreTrainedModel:
    model: PreTrainedModel = AutoModelForCausalLM.from_pretrained(pretrained.model_path)
    return model


def check_run(job_id: int, method: str, pretrained: Pretrained) -> int:
    """What every PEFT run shares: success, losses and token accuracy logged, the watch prompt answered at each
    eval, and the logged count of trained parameters equal to the resolved one and to the settings' own count
    (the one the estimate shows). Returns that count."""
    assert run_job(job_id) == "succeeded", get_job(job_id).error
    logged = points(job_id)
    train = [v for _, v in logged if "loss" in v]
    assert len(train) == HP["max_steps"] and all(v["loss"] > 0 for v in train)
    # Eval points from the base's step 0 on carry the SFT token accuracy: the logits line up with the labels.
    evals = [(step, v) for step, v in logged if "eval_loss" in v]
    assert [step for step, _ in evals][:3] == [0, 2, 4]
    assert all(0 <= v["eval_token_accuracy"] <= 1 for _, v in evals)
    with session_scope() as s:
        samples = list(s.scalars(select(JobSample).where(JobSample.job_id == job_id).order_by(JobSample.id)))
    assert [(r.step, r.prompt) for r in samples] == [(0, WATCH), (2, WATCH), (4, WATCH)]

    # Virtual tokens go before a whole row: prompt and prefix tuning pad their batches, and say so.
    packs = METHODS[method].packs_examples
    assert any(m.startswith("packing each batch" if packs else "packing off") for m in messages(job_id))
    job = get_job(job_id)
    counts = job.resolved_config["parameters"]
    found = [m for m in messages(job_id) if m.startswith(f"{method}: training ")]
    assert len(found) == 1
    match = re.match(rf"{method}: training ([\d,]+) of ([\d,]+) parameters", found[0])
    assert match is not None
    trainable, total = (int(g.replace(",", "")) for g in match.groups())
    assert (trainable, total) == (counts["trainable"], counts["total"])
    settings = METHODS[method].settings.model_validate(job.method_config or {})
    shape = model_shape(json.loads((pretrained.model_path / "config.json").read_text()))
    assert isinstance(settings, MethodSettings)
    assert settings.trainable_parameters(shape, shape.total_parameters()) == trainable
    return trainable


def greedy_by_forward(model: torch.nn.Module, input_ids: torch.Tensor, n: int, eos: int) -> list[int]:
    """The reference answer: n greedy tokens other than `eos`, each from a full forward pass of the sequence so
    far (the path training took: no cache, the adapter's prompt or prefixes put in place by PEFT's forward)."""
    ids = input_ids
    with torch.no_grad():
        for _ in range(n):
            logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[:, -1]
            logits[:, eos] = -torch.inf  # as generate's min_new_tokens does
            ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], dim=1)
    return ids[0, input_ids.shape[1] :].tolist()


def reload_and_generate(pretrained: Pretrained, adapter: Path) -> PeftModel:
    """The adapter on a fresh base: its base weights are the pretrained model's, and generate() (as the watch
    prompts and the playground call it) answers what the trained model predicts, not what the bare base would."""
    model = PeftModel.from_pretrained(base_model(pretrained), adapter)
    model.eval()
    reference = base_model(pretrained).state_dict()
    base = {k.replace(".base_layer", ""): v for k, v in model.get_base_model().state_dict().items()}
    for key, value in reference.items():
        assert torch.equal(base[key], value), key
    tokenizer = AutoTokenizer.from_pretrained(adapter)
    inputs = tokenizer("The tortoise said", return_tensors="pt")
    n = 8
    fix_generation(model)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=n, min_new_tokens=n, do_sample=False)
    answer = out[0, inputs["input_ids"].shape[1] :].tolist()
    eos = tokenizer.eos_token_id
    assert answer == greedy_by_forward(model, inputs["input_ids"], n, eos)
    if model.active_peft_config.is_prompt_learning:
        # What the bare base answers (all generate() gave before workers/prompt_learning.py): not this.
        assert answer != greedy_by_forward(base_model(pretrained), inputs["input_ids"], n, eos)
    return model


def adapter_weights(adapter: Path) -> dict[str, torch.Tensor]:
    return load_file(adapter / "adapter_model.safetensors")


def test_prompt_tuning_trains_only_its_virtual_tokens_and_reloads(
    seed: Seed, pretrained: Pretrained, tmp_path: Path
) -> None:
    # The soft prompt starts from the embeddings of a text, which PEFT tokenizes with the base's own (local)
    # tokenizer; activations are recomputed in the backward pass, and a checkpoint is saved mid-run.
    init_text = "Answer the task:"
    config = {"num_virtual_tokens": 6, "init": "text", "init_text": init_text}
    job_id = peft_job(seed, pretrained, "prompt_tuning", config, gradient_checkpointing=True, checkpoint_steps=2)
    trainable = check_run(job_id, "prompt_tuning", pretrained)
    base = base_model(pretrained)
    assert trainable == 6 * base.config.hidden_size

    files = artifacts(job_id)
    assert set(files) == {"adapter.zip"}
    assert any(m.startswith("no merged.zip: prompt tuning learns virtual tokens") for m in messages(job_id))
    checkpoints = list_checkpoints(job_id)
    assert 2 in [c.step for c in checkpoints]
    assert all((c.path / "adapter_model.safetensors").is_file() for c in checkpoints)

    adapter = unzip(files["adapter.zip"], tmp_path / "adapter")
    weights = adapter_weights(adapter)
    assert set(weights) == {"prompt_embeddings"}  # nothing of the base model is in the adapter
    trained = weights["prompt_embeddings"]
    # PEFT's text init: the text's token ids, repeated to the prompt's length.
    ids = AutoTokenizer.from_pretrained(pretrained.model_path)(init_text)["input_ids"]
    ids = (ids * 6)[:6]
    start = base.get_input_embeddings().weight[torch.tensor(ids)].detach()
    # It trained, and from the text's embeddings: Adam moves each value about the learning rate per step at most
    # (twice that allowed here), while random vectors (PEFT's other init, N(0, 1)) would lie ~sqrt(numel) away.
    moved = (trained - start).norm().item()
    assert 0 < moved < 2 * HP["learning_rate"] * HP["max_steps"] * start.numel() ** 0.5
    reload_and_generate(pretrained, adapter)


def test_prefix_tuning_with_a_projection_trains_its_prefixes_and_reloads(
    seed: Seed, pretrained: Pretrained, tmp_path: Path
) -> None:
    config = {"num_virtual_tokens": 4, "prefix_projection": True}
    job_id = peft_job(seed, pretrained, "prefix_tuning", config, checkpoint_steps=2)
    trainable = check_run(job_id, "prefix_tuning", pretrained)
    hidden = base_model(pretrained).config.hidden_size
    layers = base_model(pretrained).config.num_hidden_layers
    assert trainable > 4 * layers * 2 * hidden  # more than the prefixes: the MLP that makes them trains too

    files = artifacts(job_id)
    assert set(files) == {"adapter.zip"}
    assert any(m.startswith("no merged.zip: prefix tuning learns keys and values") for m in messages(job_id))
    adapter = unzip(files["adapter.zip"], tmp_path / "adapter")
    # PEFT saves what the MLP makes of the prefixes, one key and one value per layer and virtual token.
    final = adapter_weights(adapter)
    assert set(final) == {"prompt_embeddings"}
    assert final["prompt_embeddings"].shape == (4, layers * 2 * hidden)
    # The base is frozen, so only the prefixes can have moved the loss and the saved prefixes between steps.
    early = adapter_weights(list_checkpoints(job_id)[0].path)
    assert not torch.equal(early["prompt_embeddings"], final["prompt_embeddings"])
    evals = [v["eval_loss"] for _, v in points(job_id) if "eval_loss" in v]
    assert evals[-1] < evals[0]
    reload_and_generate(pretrained, adapter)

    # A run resumed from step 2 (a pause, a rollback) gets the MLP back, not just its output, and ends where the
    # uninterrupted run did.
    resumed = peft_job(seed, pretrained, "prefix_tuning", config, checkpoint_steps=2)
    checkpoint = get_settings().path("jobs", str(resumed)) / "checkpoints" / "checkpoint-2"
    shutil.copytree(list_checkpoints(job_id)[0].path, checkpoint)
    with session_scope() as s:
        s.execute(update(Job).where(Job.id == resumed).values(resume_checkpoint=str(checkpoint)))
    assert run_job(resumed) == "succeeded", get_job(resumed).error
    assert "resuming from checkpoint-2" in messages(resumed)
    again = adapter_weights(unzip(artifacts(resumed)["adapter.zip"], tmp_path / "resumed"))
    torch.testing.assert_close(again["prompt_embeddings"], final["prompt_embeddings"])


def ia3_run(seed: Seed, pretrained: Pretrained, tmp_path: Path, config: dict[str, Any], **hp: Any) -> set[str]:
    """An IA³ job: its adapter holds only scaling vectors, moved away from 1 (the identity they start at), and its
    merged.zip differs from the base in the scaled modules' weights only. Returns the names of those modules."""
    job_id = peft_job(seed, pretrained, "ia3", config, **hp)
    check_run(job_id, "ia3", pretrained)
    files = artifacts(job_id)
    assert set(files) == {"adapter.zip", "merged.zip"}
    adapter = unzip(files["adapter.zip"], tmp_path / "adapter")
    vectors = adapter_weights(adapter)
    assert vectors and all("ia3_l" in k for k in vectors)
    assert all(not torch.equal(v, torch.ones_like(v)) for v in vectors.values())
    reload_and_generate(pretrained, adapter)

    merged = AutoModelForCausalLM.from_pretrained(unzip(files["merged.zip"], tmp_path / "merged")).state_dict()
    reference = base_model(pretrained).state_dict()
    changed = {k for k, v in reference.items() if not torch.equal(merged[k], v)}
    assert all(k.endswith("_proj.weight") for k in changed)

    # Every training point carries the job's peak memory so far: at least what the weights alone take.
    train = [v for _, v in points(job_id) if "loss" in v]
    weight_bytes = sum(v.numel() * v.element_size() for v in reference.values())
    peaks = [v["peak_memory_bytes"] for v in train]
    assert all(p > weight_bytes for p in peaks)
    assert peaks == sorted(peaks)  # a peak so far never falls
    assert all(v["peak_memory_bytes"] >= v["memory_mb"] * MB for v in train)
    return {k.split(".")[-2] for k in changed}


def test_ia3_scales_keys_values_and_the_mlp_input_and_merges(
    seed: Seed, pretrained: Pretrained, tmp_path: Path
) -> None:
    # With activations recomputed in the backward pass.
    assert ia3_run(seed, pretrained, tmp_path, {}, gradient_checkpointing=True) == {"k_proj", "v_proj", "down_proj"}


def test_ia3_on_chosen_modules(seed: Seed, pretrained: Pretrained, tmp_path: Path) -> None:
    config = {"target_modules": ["q_proj", "up_proj"], "feedforward_modules": ["up_proj"]}
    assert ia3_run(seed, pretrained, tmp_path, config) == {"q_proj", "up_proj"}


def test_ia3_with_an_unknown_module_fails_and_names_the_setting(seed: Seed, pretrained: Pretrained) -> None:
    config = {"target_modules": ["k_proj", "mlp_in"], "feedforward_modules": ["mlp_in"]}
    job_id = peft_job(seed, pretrained, "ia3", config)
    assert run_job(job_id) == "failed"
    error = get_job(job_id).error or ""
    assert error.startswith("target_modules mlp_in match no module of this model")
    assert "down_proj" in error  # the linear layers the user could have named
    assert get_job(job_id).current_step == 0
