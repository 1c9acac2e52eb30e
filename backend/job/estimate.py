"""Before launch: how big, how long, how costly, and will it fit? Torch-free, from configs and past runs.

Parameter counts come from the model's config (a preset, or the base's config.json); tokens from the dataset's
token statistics when a worker has computed them for these settings, else from its size; time from the FLOP/s
that finished runs actually reached on the device; memory from the usual accounting (weights, gradients, AdamW
state, activations, logits) against the live worker's device memory.
"""

import math
import statistics
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.db import Dataset, DatasetAnalysis, Job, JobMetric, Model, User
from backend.errors import Invalid
from backend.job.preflight import DataCheck, Problem, problems
from backend.job.schemas import EstimateRead, Hyperparameters, JobCreate
from backend.job.service import job_settings, owned_dataset
from backend.method import registry
from backend.method.registry import Method, Objective
from backend.method.shape import ModelShape, model_shape
from backend.model.presets import PRESETS
from backend.model.service import read_model_json, ready_model
from backend.worker.service import can_run_qlora, live_training_workers

# A byte of UTF-8 text is about a quarter of a BPE token in English; only used until real statistics exist.
BYTES_PER_TOKEN = 4.0
GIB = 1024**3


def flops_per_token(s: ModelShape, total: int, trainable: int, seq_len: int, *, lookup: int | None = None) -> float:
    """Training FLOPs per token of the model's matmuls, as model FLOPs utilisation counts them (PaLM, Megatron,
    NeMo). Every weight costs 2 in the forward pass and 2 in the backward pass for the gradient of its input; a
    *trained* weight 2 more for its own gradient: 6 per weight in full training, 4 per frozen weight, so LoRA
    costs about 2/3 of 6·N (as NeMo counts it). `lookup` weights (an untied input embedding, by default from the
    shape) are a table lookup, no multiply-adds: they cost nothing, trained or not. Attention's scores and
    weighted sum add 4·L·q·T forward and twice that backward: 12·L·q·T for sequences of T positions."""
    if lookup is None:
        lookup = 0 if s.tied else s.vocab * s.hidden
    weights = max(0, total - lookup)
    trained = min(trainable, weights)  # a trained input embedding is in both counts, and costs nothing in either
    return 4.0 * weights + 2.0 * trained + 12.0 * s.layers * (s.q or s.hidden) * seq_len


def weight_bytes(method: Method, cuda: bool) -> float:
    """Bytes per base weight: fp32 master weights when they train; a frozen base under an adapter is stored in
    bf16 on a GPU (fp32 on a CPU); QLoRA's NF4 is about 4.5 bits with its scales."""
    if method.quantized_base:
        return 0.55
    return 2.0 if method.adapter and cuda else 4.0


def memory_bytes(
    s: ModelShape,
    total: int,
    trainable: int,
    method: Method,
    hp: Hyperparameters,
    cuda: bool,
    objective: Objective,
    seq_len: int,
) -> int:
    """Peak training memory: weights + gradients + AdamW moments + activations + logits (fp32 on CPU), for
    sequences of `seq_len` positions (max_length plus a prompt-learning method's virtual tokens)."""
    per_weight = weight_bytes(method, cuda)
    if objective.reference_model and not method.adapter:
        per_weight += 2.0 if cuda else 4.0  # a frozen reference copy (an adapter's reference is the adapter off)
    # DPO runs each pair's chosen and rejected answers in one batch: twice the sequences.
    b, t, h = hp.batch_size * objective.backprop_sequences, seq_len, s.hidden
    act_bytes = 2 if cuda else 4
    # ~34·b·t·h bytes per layer in 16-bit (Korthikanti et al. 2022); checkpointing keeps only block inputs.
    per_layer = (2 if hp.gradient_checkpointing else 34 / 2) * b * t * h * act_bytes
    # fp32 logits, their softmax and gradient; a classifier's head has a handful of outputs, not a vocabulary.
    logits = 3 * b * (1 if objective.classifier else t * s.vocab) * 4
    optimizer = trainable * 4 * 3  # fp32 gradient + two AdamW moments
    return int(total * per_weight + optimizer + s.layers * per_layer + logits)


def _read_config(model: Model) -> dict[str, Any]:
    return read_model_json(model.path, "config.json")


def _config(session: Session, user: User, body: JobCreate) -> tuple[dict[str, Any], int | None]:
    if body.kind == "pretrain":
        preset = dict(PRESETS[body.architecture or "tiny"])
        if body.tokenizer_model is not None:
            # The model follows the borrowed tokenizer's vocabulary, not the preset's.
            borrowed = ready_model(session, user=user, model_id=body.tokenizer_model, field="tokenizer_model")
            preset["vocab_size"] = model_shape(_read_config(borrowed)).vocab or preset["vocab_size"]
        return preset, None
    assert body.base_model is not None
    model = ready_model(session, user=user, model_id=body.base_model, field="base_model")
    return _read_config(model), model.parameters or None


def stats_model(body: JobCreate) -> int | None:
    """Whose tokenizer counts the job's tokens: the base model's, or for pretraining a borrowed one's (a
    tokenizer trained on the dataset at launch does not exist yet, so there is nothing to count with)."""
    return body.base_model if body.kind == "finetune" else body.tokenizer_model


def _token_stats(session: Session, dataset: Dataset, body: JobCreate, objective: str) -> dict[str, Any] | None:
    """The worker's token statistics for these settings, if it has computed them (the Datasets page or the
    new-job form asks for them). batch_size only changes steps_per_epoch and padding, not the token counts,
    so any batch size will do; the job's own is preferred."""
    model_id = stats_model(body)
    if model_id is None:
        return None
    rows = session.scalars(
        select(DatasetAnalysis)
        .where(
            DatasetAnalysis.dataset_id == dataset.id, DatasetAnalysis.kind == "stats", DatasetAnalysis.status == "done"
        )
        .order_by(DatasetAnalysis.id.desc())
    )
    matches = [
        row
        for row in rows
        if row.result
        and (row.params or {}).get("base_model") == model_id
        and (row.params or {}).get("objective") == objective
        and (row.params or {}).get("max_length") == body.hyperparameters.max_length
    ]
    same_batch = [r for r in matches if (r.params or {}).get("batch_size") == body.hyperparameters.batch_size]
    best = same_batch or matches
    return best[0].result if best else None


def _first_timed(session: Session, job_id: int, order: Any) -> JobMetric | None:
    """The job's first (or, ordered by id descending, last) training point that counts tokens. Evaluation
    points carry no token count, so look a few rows in; a long run's thousands of rows are never read."""
    rows = session.scalars(select(JobMetric).where(JobMetric.job_id == job_id).order_by(order).limit(20))
    return next((m for m in rows if "tokens_seen" in m.values), None)


def _measured_flops_per_second(session: Session, device: str) -> float | None:
    """Median training FLOP/s that recent finished runs reached on `device` (None before the first run)."""
    jobs = session.scalars(
        select(Job).where(Job.device == device, Job.status == "succeeded").order_by(Job.id.desc()).limit(10)
    )
    rates = []
    for job in jobs:
        per_token = (job.resolved_config or {}).get("flops_per_token")
        if not per_token:
            continue
        first, last = _first_timed(session, job.id, JobMetric.id), _first_timed(session, job.id, JobMetric.id.desc())
        if first is None or last is None or first.id == last.id:
            continue
        seconds = (last.created_at - first.created_at).total_seconds()
        tokens = last.values["tokens_seen"] - first.values["tokens_seen"]
        if seconds > 0 and tokens > 0:
            rates.append(per_token * tokens / seconds)
    return statistics.median(rates) if rates else None


def estimate_job(session: Session, *, user: User, body: JobCreate) -> EstimateRead:
    """Parameters, tokens, steps, FLOPs, time and memory of the job `body` describes, before it runs."""
    hp = body.hyperparameters
    dataset = owned_dataset(session, user, body.dataset_id, "dataset_id")
    objective = body.objective or registry.default_objective(dataset.shape) or "causal_lm"
    goal = registry.objective(objective)
    method = registry.method(body.method)
    settings, _ = job_settings(body, objective)
    config, stored_total = _config(session, user, body)
    shape = model_shape(config)
    total = stored_total or shape.total_parameters()
    trainable = min(total, settings.trainable_parameters(shape, total))
    notes: list[str] = []
    extra = settings.extra_positions()
    seq_len = hp.max_length + extra
    # Refused when the virtual tokens are what push a sequence past the base's positions (a max_length already
    # past them is every method's matter, and runs on rotary bases).
    if extra and hp.max_length <= shape.positions < seq_len:
        raise Invalid(
            f"max_length {hp.max_length} plus {extra} virtual tokens is {seq_len} positions; "
            f"the base model takes at most {shape.positions}: lower one of them",
            field="method_config.num_virtual_tokens",
        )

    stats = _token_stats(session, dataset, body, objective)
    if goal.classifier and method.adapter:
        # PEFT trains (and saves) the new head in full beside the adapter: hidden x labels, no bias.
        classes = len(((stats or {}).get("preflight") or {}).get("classes") or {})
        trainable = min(total, trainable + shape.hidden * classes)
        if not classes:
            notes.append(
                "the new classification head (hidden size x number of labels) trains too: the dataset's statistics "
                "count the labels"
            )
    if stats:
        tokens_per_epoch = float(stats.get("supervised_tokens") or stats.get("tokens") or 0)
        examples = int(stats.get("examples") or dataset.record_count)
    else:
        tokens_per_epoch = dataset.size_bytes / BYTES_PER_TOKEN
        examples = max(1, math.ceil(tokens_per_epoch / hp.max_length)) if goal.packed else dataset.record_count
        notes.append(
            "tokens estimated from the file size (~4 bytes per token): the tokenizer is trained on the dataset "
            "at launch, so there is none to count with yet"
            if stats_model(body) is None
            else "tokens estimated from the file size (~4 bytes per token); the dataset's statistics give exact counts"
        )
    examples = max(1, round(examples * (1 - (hp.validation_fraction if body.validation_dataset_id is None else 0))))
    per_step = hp.batch_size * hp.gradient_accumulation_steps
    steps = hp.max_steps or max(1, math.ceil((hp.epochs or 1.0) * math.ceil(examples / per_step)))
    # Positions processed (padding and prompts included); a DPO example is two sequences, chosen and rejected, a
    # KTO example two as well: its answer, and another record's answer for the KL estimate (forward only, but
    # counted as trained: an upper bound).
    tokens = float(steps * per_step * hp.max_length * goal.sequences_per_example)
    per_token = flops_per_token(shape, total, trainable, seq_len)
    if goal.reference_model:
        per_token += 2.0 * total  # the reference model's forward pass over the same tokens
    flops = per_token * tokens
    known = shape.known
    if not known:
        notes.append(
            "the base model's config.json lacks hidden_size, num_hidden_layers or vocab_size: "
            "FLOPs and memory leave out what those sizes would add"
        )

    def need_on(cuda: bool) -> int:
        return memory_bytes(shape, total, trainable, method, hp, cuda=cuda, objective=goal, seq_len=seq_len)

    # Leave room for the runtime and fragmentation (90%). The job is judged against a worker it fits on if any
    # live one could take it (a CUDA one first), else against the one with the most memory.
    workers = [w for w in live_training_workers(session) if method.requires is None or can_run_qlora(w)]
    fitting = [w for w in workers if w.device_memory_bytes and need_on(w.cuda) <= w.device_memory_bytes * 0.9]
    worker = max(fitting or workers, key=lambda w: (w.cuda, w.device_memory_bytes or 0), default=None)
    seconds = None
    if worker is None:
        notes.append("no training worker is connected, so time and memory cannot be checked against one")
    else:
        rate = _measured_flops_per_second(session, worker.device)
        if rate:
            seconds = flops / rate
        else:
            notes.append(f"no finished run on {worker.device} yet to measure its speed: run a short job first")
    need = need_on(bool(worker and worker.cuda))
    available = worker.device_memory_bytes if worker else None
    # No verdict on a guess from an incomplete config.
    fits = None if not available or not known else bool(fitting)
    advice = []
    if fits is False:
        if not hp.gradient_checkpointing and method.gradient_checkpointing:
            advice.append("turn on gradient_checkpointing")
        if hp.batch_size > 1:
            advice.append(f"halve batch_size and double gradient_accumulation_steps (now {hp.batch_size})")
        if not method.adapter:
            advice.append("use method lora" + (" or qlora" if worker and worker.cuda else ""))
        advice.append("lower max_length")
    return EstimateRead(
        problems=preflight(stats, body),
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
        memory_bytes_cuda=need_on(True) if known else None,
        memory_bytes_cpu=need_on(False) if known else None,
        disk_bytes=disk_bytes(total, trainable, adapter=method.adapter, keep=hp.keep_checkpoints) if known else None,
        advice=advice,
        notes=notes,
        dry_run=stats,
    )


def disk_bytes(total: int, trainable: int, *, adapter: bool, keep: int) -> int:
    """The most a run holds on the worker's disk: `keep` checkpoints plus the one being written (each the trained
    weights in fp32 and AdamW's two fp32 moments per trainable parameter), and the final weights."""
    weights = 4 * (trainable if adapter else total)
    checkpoint = weights + 8 * trainable
    return (keep + 1) * checkpoint + weights


def preflight(stats: dict[str, Any] | None, body: JobCreate) -> list[Problem]:
    """The worker's pre-flight check, run on the dataset's dry run for these settings (none without one)."""
    raw = (stats or {}).get("preflight")
    if not raw:
        return []
    check = DataCheck.model_validate(raw)
    hp = body.hyperparameters
    # Packed text is held out by characters (`split_text_holdout`): any text leaves an eval part. Examples are
    # held out whole: at least one, never all.
    if body.validation_dataset_id is None and hp.validation_fraction > 0 and check.unit != "texts":
        kept = check.kept
        check.validation = 0 if kept < 2 else min(max(1, round(kept * hp.validation_fraction)), kept - 1)
    return problems(check, min_kept_fraction=hp.min_kept_fraction)


def admit(session: Session, *, user: User, body: JobCreate) -> EstimateRead:
    """Refuse, before a job is stored, what the dry run shows cannot give a meaningful run, and (unless `force`)
    a job whose memory estimate exceeds the memory of every live worker that could take it. Returns the estimate
    the job was admitted on."""
    est = estimate_job(session, user=user, body=body)
    if est.problems:
        first = est.problems[0]
        raise Invalid(
            "; ".join(p.message for p in est.problems),
            field=first.field,
            code="preflight",
            problems=[p.model_dump() for p in est.problems],
        )
    if est.fits is False and not body.force:
        assert est.device_memory_bytes is not None
        raise Invalid(
            f"the job needs about {_gib(est.memory_bytes)} of memory; the live training worker with the most "
            f"({est.device}) has {_gib(est.device_memory_bytes)}: "
            + "; ".join(est.advice)
            + ' (or send "force": true to queue it anyway)',
            field="hyperparameters",
            code="does_not_fit",
            memory_bytes=est.memory_bytes,
            device_memory_bytes=est.device_memory_bytes,
            advice=est.advice,
        )
    return est


def _gib(n: int) -> str:
    return f"{n / GIB:,.2f} GiB"
