"""The worker's side of the pre-flight (`backend.job.preflight`): after tokenizing and before the first step, the
data the recipe built is checked, and a run that could not give a meaningful result fails at once, saying what
to change, instead of "succeeding" on a handful of examples."""

from collections import Counter
from collections.abc import Iterable, Sequence, Sized

from backend.job.lifecycle import log_event
from backend.job.preflight import DataCheck, keep_curve, problems, untrainable
from workers.context import JobContext
from workers.examples import Example, SFTStats


class PreflightFailed(ValueError):
    """The data cannot give a meaningful run with these settings; the message says what to change."""


def evaluation_asked(ctx: JobContext) -> tuple[bool, str]:
    """(whether the job evaluates, the setting that asked for it)."""
    if ctx.validation_dataset is not None:
        return True, "validation_dataset_id"
    return ctx.hp.validation_fraction > 0, "validation_fraction"


def sft_check(ctx: JobContext, stats: SFTStats, eval_set: Sized, unit: str = "records") -> DataCheck:
    """The check of SFT-style examples (prompt → answer, conversations): how many survive max_length."""
    asked, source = evaluation_asked(ctx)
    return DataCheck(
        unit=unit,
        total=len(stats.shortest_fits),
        kept=stats.kept,
        max_length=ctx.hp.max_length,
        keep_at=keep_curve(stats.shortest_fits, ctx.hp.max_length),
        untrainable=untrainable(stats.shortest_fits),
        supervised_tokens=stats.supervised,
        validation=len(eval_set) if asked else None,
        validation_source=source,
    )


def packed_check(
    ctx: JobContext, texts: int, train_set: Sequence[Example], eval_set: Sized, *, tokens: int | None = None
) -> DataCheck:
    """The check of packed text (causal_lm): nothing is dropped, but an empty corpus or held-out part is.
    `tokens`: the training blocks' tokens when known (a token file's blocks are not walked to count them)."""
    asked, source = evaluation_asked(ctx)
    return DataCheck(
        unit="texts",
        total=texts,
        kept=texts if train_set else 0,
        max_length=ctx.hp.max_length,
        supervised_tokens=tokens if tokens is not None else sum(len(e["input_ids"]) for e in train_set),
        validation=len(eval_set) if asked else None,
        validation_source=source,
    )


def class_counts(labels: Iterable[object]) -> dict[str, int]:
    return {str(label): n for label, n in Counter(labels).items()}


def enforce(ctx: JobContext, check: DataCheck) -> None:
    """Fail the job before its first step when the data cannot give a meaningful run. A resumed run was checked
    when it first started (and jobs stored before this check existed have no min_kept_fraction of their own)."""
    if ctx.resume_checkpoint is not None:
        return
    found = problems(check, min_kept_fraction=ctx.hp.min_kept_fraction)
    for problem in found:
        log_event(ctx.job_id, f"pre-flight: {problem.message}", "error")
    if found:
        raise PreflightFailed("; ".join(p.message for p in found))
