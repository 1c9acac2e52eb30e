"""Runs side by side: overlaid curves on a common x axis (step, tokens, FLOPs, wall time) and what differs.

The "pretrain vs fine-tune" question is answered by the same data: data used, time, FLOPs and the final
validation loss of each run, next to each other.
"""

import bisect
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.db import Artifact, Dataset, Job, Model, User
from backend.db.metric_rollup import ChartPoint, chart_points
from backend.errors import Invalid
from backend.job.schemas import CompareCurvePoint, CompareRead, CompareRun, Hyperparameters
from backend.job.service import get_job
from backend.method import registry

MAX_RUNS = 8
CURVE_KEYS = ("loss", "eval_loss", "eval_bits_per_byte", "learning_rate")
# The accuracy an objective's evaluations log, if any: a classifier's share of right labels, an SFT run's share
# of completion tokens predicted right.
ACCURACY_KEYS = ("eval_accuracy", "eval_token_accuracy")


def _tokens_per_step(job: Job) -> float | None:
    """Tokens one optimizer step consumes, when the run did not log its own count."""
    hp = job.hyperparameters or {}
    batch = hp.get("batch_size", 8) * hp.get("gradient_accumulation_steps", 1)
    length = hp.get("max_length")
    return float(batch * length) if length else None


def _flops_per_token(job: Job) -> float | None:
    """Training FLOPs per token: the worker's figure (6·N plus attention for full training), else 6·N."""
    config = job.resolved_config or {}
    if isinstance(config.get("flops_per_token"), int | float):
        return float(config["flops_per_token"])
    total = (config.get("parameters") or {}).get("total")
    return 6.0 * total if total else None


def _metrics(session: Session, job: Job) -> list[ChartPoint]:
    """The run's points as its dashboard charts them: all of a short run, a long one's thinned keeping extremes."""
    return chart_points(session, job.id)


def _tokens_at(metrics: list[ChartPoint]) -> Callable[[int], float | None]:
    """Tokens seen by a step, from the worker's counts (between two logged counts, on the line joining them:
    a thinned curve keeps only some of them). None before the first count."""
    logged = [(m.step, float(m.values["tokens_seen"])) for m in metrics if "tokens_seen" in m.values]
    steps = [step for step, _ in logged]

    def at(step: int) -> float | None:
        i = bisect.bisect_right(steps, step)
        if i == 0:
            return None
        (s0, t0), following = logged[i - 1], logged[i] if i < len(logged) else None
        if following is None or s0 == step or following[0] == s0:
            return t0
        return t0 + (following[1] - t0) * (step - s0) / (following[0] - s0)

    return at


def _curve(job: Job, metrics: list[ChartPoint]) -> tuple[list[CompareCurvePoint], float | None, float | None]:
    """The curve, the tokens seen by its end and the seconds from the first point to the last."""
    per_step = _tokens_per_step(job)
    flops_per_token = _flops_per_token(job)
    start = min((m.created_at for m in metrics), default=None)
    curve: list[CompareCurvePoint] = []
    tokens_seen: float | None = None
    # Training points carry the worker's count of real (unpadded) tokens; eval points take the count at their
    # step. Only a run that never logged a count falls back to steps x batch x max_length.
    logs_tokens = any("tokens_seen" in m.values for m in metrics)
    tokens_at = _tokens_at(metrics)
    for m in metrics:
        tokens = tokens_at(m.step) if logs_tokens else (per_step * m.step if per_step else None)
        tokens_seen = tokens if tokens is not None else tokens_seen
        values = {k: m.values[k] for k in CURVE_KEYS if k in m.values}
        if not values:
            continue  # a point a thinned chart kept for another series draws nothing here
        curve.append(
            CompareCurvePoint(
                step=m.step,
                seconds=(m.created_at - start).total_seconds() if start else 0.0,
                tokens=tokens,
                flops=tokens * flops_per_token if tokens is not None and flops_per_token else None,
                values=values,
            )
        )
    end = max((m.created_at for m in metrics), default=None)
    return curve, tokens_seen, (end - start).total_seconds() if start and end else None


# How deep a chain of models trained from models is followed to find whose tokenizer a run uses.
MAX_LINEAGE = 8


def _model_tokenizer(session: Session, model: Model, depth: int) -> tuple[str, str]:
    """(key, label) of the tokenizer a model carries: a job's output carries that job's tokenizer."""
    source = session.get(Job, model.job_id) if model.job_id is not None and depth < MAX_LINEAGE else None
    if source is not None:
        return _job_tokenizer(session, source, depth + 1)
    hub_id = (model.details or {}).get("hub_id")
    return (f"hub:{hub_id}", str(hub_id)) if hub_id else (f"model:{model.id}", model.name)


def _job_tokenizer(session: Session, job: Job, depth: int = 0) -> tuple[str, str]:
    """(key, label) of the tokenizer a run uses: its base model's, a borrowed one, or one it trained itself."""
    model_id = job.base_model_id if job.kind == "finetune" else job.tokenizer_model_id
    model = session.get(Model, model_id) if model_id is not None else None
    if model is not None:
        return _model_tokenizer(session, model, depth)
    return f"job:{job.id}", f"trained by {job.name}"


def _last(metrics: list[ChartPoint], keys: tuple[str, ...]) -> float | None:
    """The latest logged value of the first of `keys` a point holds."""
    for m in reversed(metrics):
        value = next((m.values[k] for k in keys if isinstance(m.values.get(k), int | float)), None)
        if value is not None:
            return float(value)
    return None


def _output_bytes(session: Session, job: Job) -> int | None:
    """Size on disk of the run's trained output: adapter.zip for an adapter method, else model.zip."""
    adapter = job.kind == "finetune" and registry.method(job.method).adapter
    name = "adapter.zip" if adapter else "model.zip"
    query = select(Artifact.size_bytes).where(Artifact.job_id == job.id, Artifact.name == name)
    return session.scalar(query.order_by(Artifact.id.desc()).limit(1))


def _per_second(tokens: float | None, seconds: float | None) -> float | None:
    return tokens / seconds if tokens is not None and seconds else None


def _run(session: Session, job: Job) -> CompareRun:
    dataset = session.get(Dataset, job.dataset_id)
    base = session.get(Model, job.base_model_id) if job.base_model_id else None
    metrics = _metrics(session, job)
    curve, tokens, seconds = _curve(job, metrics)
    flops_per_token = _flops_per_token(job)
    evals = [p.values["eval_loss"] for p in curve if "eval_loss" in p.values]
    bits = [p.values["eval_bits_per_byte"] for p in curve if "eval_bits_per_byte" in p.values]
    config = job.resolved_config or {}
    trainable = (config.get("parameters") or {}).get("trainable")
    total = (config.get("parameters") or {}).get("total")
    # A PEFT model's total counts its adapter too; the share is of the base's own parameters, as the estimate
    # and the registry's usual ranges give it.
    base_total = total - trainable if total and trainable and registry.method(job.method).adapter else total
    # The workers log it with the training points, not the evaluation ones: the latest is the run's last word.
    peak = _last(metrics, ("peak_memory_bytes",))
    return CompareRun(
        id=job.id,
        name=job.name,
        kind=job.kind,
        status=job.status,
        method=job.method,
        objective=job.objective,
        architecture=job.architecture,
        base_model=base.name if base else None,
        dataset=dataset.name if dataset else None,
        dataset_records=dataset.record_count if dataset else None,
        dataset_bytes=dataset.size_bytes if dataset else None,
        trainable_parameters=trainable,
        total_parameters=total,
        trainable_fraction=trainable / base_total if trainable is not None and base_total else None,
        steps=job.current_step,
        total_steps=job.total_steps,
        tokens=tokens,
        flops=tokens * flops_per_token if tokens is not None and flops_per_token else None,
        seconds=seconds,
        tokens_per_second=_per_second(tokens, seconds),
        peak_memory_bytes=int(peak) if peak is not None else None,
        final_loss=job.final_loss,
        final_eval_loss=job.final_eval_loss,
        best_eval_loss=min(evals) if evals else None,
        final_eval_bits_per_byte=bits[-1] if bits else None,
        final_eval_accuracy=_last(metrics, ACCURACY_KEYS),
        artifact_bytes=_output_bytes(session, job),
        curve=curve,
        tokenizer=_job_tokenizer(session, job)[1],
    )


def _dataset_name(session: Session, dataset_id: int | None) -> str | None:
    dataset = session.get(Dataset, dataset_id) if dataset_id is not None else None
    return dataset.name if dataset is not None else None


def _model_name(session: Session, model_id: int | None) -> str | None:
    model = session.get(Model, model_id) if model_id is not None else None
    return model.name if model is not None else None


def _settings(job: Job) -> dict[str, Any]:
    """A job's hyperparameters with today's defaults filled in: a setting added since it ran is no difference."""
    try:
        return Hyperparameters.model_validate(job.hyperparameters or {}).model_dump()
    except ValidationError:  # stored before a bound tightened: compare what is stored
        return dict(job.hyperparameters or {})


def _flatten(session: Session, job: Job) -> dict[str, Any]:
    """The comparable settings of a job as one flat dict; datasets and models by name, as a person knows them."""
    return {
        "kind": job.kind,
        "method": job.method,
        "objective": job.objective,
        "architecture": job.architecture,
        "base_model": _model_name(session, job.base_model_id),
        "tokenizer_model": _model_name(session, job.tokenizer_model_id),
        "dataset": _dataset_name(session, job.dataset_id),
        "validation_dataset": _dataset_name(session, job.validation_dataset_id),
        **{f"hyperparameters.{k}": v for k, v in sorted(_settings(job).items())},
        **{f"method_config.{k}": v for k, v in sorted((job.method_config or {}).items())},
        **{f"objective_config.{k}": v for k, v in sorted((job.objective_config or {}).items())},
    }


def config_diff(session: Session, jobs: list[Job]) -> dict[str, list[Any]]:
    """Settings whose values differ between the jobs: name → one value per job (None where unset)."""
    flat = [_flatten(session, j) for j in jobs]
    keys = sorted({k for f in flat for k in f})
    return {k: [f.get(k) for f in flat] for k in keys if len({repr(f.get(k)) for f in flat}) > 1}


def first_curve(session: Session, jobs: list[Job], runs: list[CompareRun]) -> str:
    """The curve to show first: validation loss, unless the runs tokenize differently. A loss per token then
    compares different units (a 2k-word tokenizer's token is less text than a 49k-word one's), and bits per
    byte of the validation text, which every language-model run with a validation set logs, is like for like."""
    differ = len({_job_tokenizer(session, j)[0] for j in jobs}) > 1
    logged = all(r.final_eval_bits_per_byte is not None for r in runs)
    return "eval_bits_per_byte" if differ and logged else "eval_loss"


def compare_jobs(session: Session, *, user: User, job_ids: list[int]) -> CompareRead:
    """The runs `job_ids` (in that order) with their curves, summaries and configuration diff."""
    ids = list(dict.fromkeys(job_ids))  # keep the order, drop repeats
    if not 1 <= len(ids) <= MAX_RUNS:
        raise Invalid(f"pick between 1 and {MAX_RUNS} runs to compare (got {len(ids)})", field="ids")
    jobs = [get_job(session, user=user, job_id=i) for i in ids]
    runs = [_run(session, j) for j in jobs]
    return CompareRead(runs=runs, diff=config_diff(session, jobs), first_curve=first_curve(session, jobs, runs))
