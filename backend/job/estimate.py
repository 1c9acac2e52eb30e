"""Before launch: how big, how long, how costly, and will it fit? Torch-free, from configs and past runs.

Parameter counts come from the model's config (a preset, or the base's config.json); tokens from the dataset's
token statistics when a worker has computed them for these settings, else from its size; time from the FLOP/s
that finished runs actually reached on the device; memory from the usual accounting (weights, gradients, AdamW
state, activations, logits) against the live worker's device memory.
"""

import json
import math
import statistics
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.db import Dataset, DatasetAnalysis, Job, JobMetric, Model, User
from backend.job.schemas import EstimateRead, Hyperparameters, JobCreate
from backend.job.service import DEFAULT_OBJECTIVE, _owned_dataset
from backend.model.presets import PRESETS
from backend.model.service import visible_model
from backend.worker.service import live_training_workers

# A byte of UTF-8 text is about a quarter of a BPE token in English; only used until real statistics exist.
BYTES_PER_TOKEN = 4.0
GIB = 1024**3


def model_shape(config: dict[str, Any]) -> dict[str, int]:
    """The dimensions the estimates need, from a Llama/Qwen/Mistral-style config."""
    h = int(config.get("hidden_size") or config.get("n_embd") or 0)
    heads = int(config.get("num_attention_heads") or config.get("n_head") or 1)
    return {
        "hidden": h,
        "intermediate": int(config.get("intermediate_size") or 4 * h),
        "layers": int(config.get("num_hidden_layers") or config.get("n_layer") or 0),
        "kv": h // heads * int(config.get("num_key_value_heads") or heads),
        "vocab": int(config.get("vocab_size") or 0),
        "tied": int(bool(config.get("tie_word_embeddings", False))),
    }


def layer_parameters(s: dict[str, int]) -> int:
    h, i, kv = s["hidden"], s["intermediate"], s["kv"]
    return 2 * h * h + 2 * h * kv + 3 * h * i + 2 * h  # attention, gated MLP, two norms


def total_parameters(s: dict[str, int]) -> int:
    embeddings = s["vocab"] * s["hidden"] * (1 if s["tied"] else 2)
    return embeddings + s["layers"] * layer_parameters(s) + s["hidden"]


# (in, out) features of each linear layer of a Llama block, for LoRA's r·(in + out) per adapted module.
def _linears(s: dict[str, int]) -> dict[str, tuple[int, int]]:
    h, i, kv = s["hidden"], s["intermediate"], s["kv"]
    return {
        "q_proj": (h, h),
        "k_proj": (h, kv),
        "v_proj": (h, kv),
        "o_proj": (h, h),
        "gate_proj": (h, i),
        "up_proj": (h, i),
        "down_proj": (i, h),
    }


def trainable_parameters(s: dict[str, int], total: int, method: str, hp: Hyperparameters) -> int:
    if method in ("full", None):
        return total
    if method == "freeze":
        head = s["vocab"] * s["hidden"] + s["hidden"]  # lm_head and the final norm train too
        return min(hp.freeze_trainable_layers, s["layers"]) * layer_parameters(s) + head
    targets = hp.lora_target_modules or list(_linears(s))
    per_layer = sum(
        hp.lora_r * (fin + fout) + (fout if hp.lora_use_dora else 0)  # DoRA adds a magnitude per output
        for name, (fin, fout) in _linears(s).items()
        if any(t == name or name.endswith(t) for t in targets)
    )
    return per_layer * s["layers"]


def flops_per_token(s: dict[str, int], total: int, trainable: int, seq_len: int) -> float:
    """Training FLOPs per token: forward 2N, backward 2N for activation gradients plus 2 per *trained* weight
    (6N for full training, ~4N with LoRA), plus attention scores, 12·L·d·T (PaLM's accounting)."""
    return 4.0 * total + 2.0 * trainable + 12.0 * s["layers"] * s["hidden"] * seq_len


def memory_bytes(s: dict[str, int], total: int, trainable: int, method: str, hp: Hyperparameters, cuda: bool) -> int:
    """Peak training memory: weights + gradients + AdamW moments + activations + logits (fp32 on CPU)."""
    weight_bytes = {"qlora": 0.55, "lora": 2.0 if cuda else 4.0}.get(method, 4.0)  # nf4 ≈ 4.5 bits with scales
    b, t, h = hp.batch_size, hp.max_length, s["hidden"]
    act_bytes = 2 if cuda else 4
    # ~34·b·t·h bytes per layer in 16-bit (Korthikanti et al. 2022); checkpointing keeps only block inputs.
    per_layer = (2 if hp.gradient_checkpointing else 34 / 2) * b * t * h * act_bytes
    logits = 3 * b * t * s["vocab"] * 4  # fp32 logits, their softmax and gradient
    optimizer = trainable * 4 * 3  # fp32 gradient + two AdamW moments
    return int(total * weight_bytes + optimizer + s["layers"] * per_layer + logits)


def _config(session: Session, user: User, body: JobCreate) -> tuple[dict[str, Any], int | None]:
    if body.kind == "pretrain":
        return dict(PRESETS[body.architecture or "tiny"]), None
    assert body.base_model is not None
    model: Model = visible_model(session, user=user, model_id=body.base_model, field="base_model")
    path = Path(model.path) / "config.json"
    return (json.loads(path.read_text()) if path.is_file() else {}), model.parameters or None


def _token_stats(session: Session, dataset: Dataset, body: JobCreate, objective: str) -> dict[str, Any] | None:
    """The worker's token statistics for these settings, if it has computed them (the Datasets page does)."""
    rows = session.scalars(
        select(DatasetAnalysis).where(
            DatasetAnalysis.dataset_id == dataset.id, DatasetAnalysis.kind == "stats", DatasetAnalysis.status == "done"
        )
    )
    for row in rows:
        p = row.params or {}
        if (
            p.get("base_model") == body.base_model
            and p.get("objective") == objective
            and p.get("max_length") == body.hyperparameters.max_length
        ):
            return row.result
    return None


def _measured_flops_per_second(session: Session, device: str) -> float | None:
    """Median training FLOP/s that recent finished runs reached on `device` (None before the first run)."""
    jobs = session.scalars(
        select(Job).where(Job.device == device, Job.status == "succeeded").order_by(Job.id.desc()).limit(10)
    )
    rates = []
    for job in jobs:
        per_token = (job.resolved_config or {}).get("flops_per_token")
        metrics = list(session.scalars(select(JobMetric).where(JobMetric.job_id == job.id).order_by(JobMetric.id)))
        timed = [m for m in metrics if "tokens_seen" in m.values]
        if not per_token or len(timed) < 2:
            continue
        seconds = (timed[-1].created_at - timed[0].created_at).total_seconds()
        tokens = timed[-1].values["tokens_seen"] - timed[0].values["tokens_seen"]
        if seconds > 0 and tokens > 0:
            rates.append(per_token * tokens / seconds)
    return statistics.median(rates) if rates else None


def estimate_job(session: Session, *, user: User, body: JobCreate) -> EstimateRead:
    """Parameters, tokens, steps, FLOPs, time and memory of the job `body` describes, before it runs."""
    hp = body.hyperparameters
    dataset = _owned_dataset(session, user, body.dataset_id, "dataset_id")
    objective = body.objective or DEFAULT_OBJECTIVE.get(dataset.shape, "causal_lm")
    config, stored_total = _config(session, user, body)
    shape = model_shape(config)
    total = stored_total or total_parameters(shape)
    method = body.method or "full"
    trainable = min(total, trainable_parameters(shape, total, method, hp))
    notes: list[str] = []

    stats = _token_stats(session, dataset, body, objective)
    if stats:
        tokens_per_epoch = float(stats.get("supervised_tokens") or stats.get("tokens") or 0)
        examples = int(stats.get("examples") or dataset.record_count)
    else:
        tokens_per_epoch = dataset.size_bytes / BYTES_PER_TOKEN
        examples = (
            max(1, math.ceil(tokens_per_epoch / hp.max_length)) if objective == "causal_lm" else dataset.record_count
        )
        notes.append(
            "tokens estimated from the file size (~4 bytes per token); the dataset's statistics give exact counts"
        )
    examples = max(1, round(examples * (1 - (hp.validation_fraction if body.validation_dataset_id is None else 0))))
    per_step = hp.batch_size * hp.gradient_accumulation_steps
    steps = hp.max_steps or max(1, math.ceil((hp.epochs or 1.0) * math.ceil(examples / per_step)))
    tokens = float(steps * per_step * hp.max_length)  # positions processed (padding and prompts included)
    per_token = flops_per_token(shape, total, trainable, hp.max_length)
    flops = per_token * tokens

    workers = live_training_workers(session)
    worker = next((w for w in workers if w.cuda), workers[0] if workers else None)
    seconds = None
    if worker is None:
        notes.append("no training worker is connected, so time and memory cannot be checked against one")
    else:
        rate = _measured_flops_per_second(session, worker.device)
        if rate:
            seconds = flops / rate
        else:
            notes.append(f"no finished run on {worker.device} yet to measure its speed: run a short job first")
    need = memory_bytes(shape, total, trainable, method, hp, cuda=bool(worker and worker.cuda))
    available = worker.device_memory_bytes if worker else None
    fits = None if not available else need <= available * 0.9  # leave room for the runtime and fragmentation
    advice = []
    if fits is False:
        if not hp.gradient_checkpointing:
            advice.append("turn on gradient_checkpointing")
        if hp.batch_size > 1:
            advice.append(f"halve batch_size and double gradient_accumulation_steps (now {hp.batch_size})")
        if method in ("full", "freeze"):
            advice.append("use method lora" + (" or qlora" if worker and worker.cuda else ""))
        advice.append("lower max_length")
    return EstimateRead(
        objective=objective,
        total_parameters=total,
        trainable_parameters=trainable,
        tokens_per_epoch=tokens_per_epoch,
        tokens_exact=stats is not None,
        steps=steps,
        tokens=tokens,
        flops_per_token=per_token,
        flops=flops,
        seconds=seconds,
        memory_bytes=need,
        device=worker.device if worker else None,
        device_memory_bytes=available,
        fits=fits,
        advice=advice,
        notes=notes,
        dry_run=stats,
    )
