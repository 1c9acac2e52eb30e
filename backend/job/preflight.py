"""Pre-flight: will the data, tokenized as this job tokenizes it, give a meaningful run?

The worker fills a `DataCheck` after tokenizing and refuses to take the first step when `problems` finds any;
the dataset's dry run (a statistics analysis) fills the same `DataCheck`, so the estimate and the wizard's Review
step show the same problems before launch, and `POST /api/jobs` refuses them. A run that would "succeed" on 3 of
25 examples, learn from no token, prefer an answer to itself or evaluate on nothing is stopped, saying what to
change.
"""

import math
from collections.abc import Iterable

from pydantic import BaseModel, Field

# The max_length values suggested when examples do not fit: the usual powers of two of context sizes.
KEEP_LENGTHS = tuple(2**k for k in range(6, 18))  # 64 … 131072


class DataCheck(BaseModel):
    """What tokenizing found, in the same terms in the worker and in the dry run."""

    unit: str = Field("examples", description="What one example is: records, pairs, texts.")
    total: int = Field(description="Examples read from the training data.")
    kept: int = Field(description="Examples that survive max_length (the rest are dropped).")
    max_length: int
    keep_at: list[tuple[int, int]] = Field(
        default_factory=list, description="(a larger max_length, examples it would keep), for the advice."
    )
    supervised_tokens: int | None = Field(None, description="Tokens that carry loss in the kept examples.")
    untrainable: int = Field(0, description="Examples with no token that carries loss at any max_length.")
    identical_pairs: int | None = Field(None, description="Preference pairs whose two answers are the same.")
    classes: dict[str, int] | None = Field(None, description="Examples per class label.")
    validation: int | None = Field(None, description="Evaluation examples; None when no evaluation was asked.")
    validation_source: str = Field("validation_fraction", description="The setting that asked for evaluation.")


class Problem(BaseModel):
    """One reason the run would be meaningless, and the setting to change."""

    field: str
    message: str


def untrainable(needs: Iterable[int | None]) -> int:
    """Examples that no max_length keeps: they hold no token that carries loss."""
    return sum(n is None for n in needs)


def keep_curve(needs: Iterable[int | None], max_length: int) -> list[tuple[int, int]]:
    """(length, examples kept at that max_length) for the suggested lengths above `max_length`; `needs` holds,
    per example, the shortest max_length that keeps it (None: no length does)."""
    sizes = sorted(n for n in needs if n is not None)
    return [(length, _at_most(sizes, length)) for length in KEEP_LENGTHS if length > max_length]


def _at_most(sorted_sizes: list[int], length: int) -> int:
    lo, hi = 0, len(sorted_sizes)
    while lo < hi:
        mid = (lo + hi) // 2
        if sorted_sizes[mid] <= length:
            lo = mid + 1
        else:
            hi = mid
    return lo


def problems(check: DataCheck, *, min_kept_fraction: float) -> list[Problem]:
    """Every reason the run would be meaningless; empty when it may start."""
    found: list[Problem] = []
    unit = check.unit
    if check.total and check.untrainable == check.total:
        found.append(
            Problem(
                field="dataset_id",
                message=f"no token of the {_count(check.total, unit)} carries loss (every answer has weight 0 or "
                "is empty): there is nothing to learn",
            )
        )
    elif check.total and (not check.kept or check.kept < math.ceil(min_kept_fraction * check.total - 1e-9)):
        found.append(Problem(field="max_length", message=_too_long(check, min_kept_fraction)))
    elif check.kept and check.supervised_tokens == 0:
        found.append(
            Problem(
                field="dataset_id",
                message=f"no token of the {_count(check.kept, unit)} carries loss (every answer has weight 0 or "
                "is empty): there is nothing to learn",
            )
        )
    if check.identical_pairs and check.identical_pairs == check.kept:
        found.append(
            Problem(
                field="dataset_id",
                message=f"in every one of the {check.kept} pairs the chosen and the rejected answer are the same: "
                "there is nothing to prefer (check the column mapping of chosen and rejected)",
            )
        )
    for label, count in sorted((check.classes or {}).items()):
        if count < 2:
            found.append(
                Problem(
                    field="dataset_id",
                    message=f"class {label!r} has {_count(count, 'example')}: a class needs at least 2 to be "
                    "learned and evaluated (add examples of it, or merge it into another)",
                )
            )
    if check.validation == 0:
        why = (
            f"{_count(check.kept, unit)} after the cut: too few to hold some out"
            if check.validation_source == "validation_fraction"
            else f"none of its examples fits in max_length={check.max_length}"
        )
        found.append(
            Problem(
                field=check.validation_source,
                message=f"the validation set is empty ({why}): add examples, raise max_length, or set "
                "validation_fraction to 0 to train without evaluation",
            )
        )
    return found


def _too_long(check: DataCheck, min_kept_fraction: float) -> str:
    head = (
        f"only {check.kept} of {check.total} {check.unit} fit in max_length={check.max_length}"
        if check.kept
        else f"none of the {check.total} {check.unit} fits in max_length={check.max_length}"
    )
    wanted = math.ceil(min_kept_fraction * check.total - 1e-9)
    enough = next(((length, kept) for length, kept in check.keep_at if kept >= wanted), None)
    if enough is not None:
        length, kept = enough
        return f"{head}: raise it to {length} to keep {kept}, or lower min_kept_fraction (now {min_kept_fraction})"
    best = max(check.keep_at, key=lambda lk: (lk[1], -lk[0]), default=None)
    if best is not None and best[1] > check.kept:
        return (
            f"{head}: even max_length={best[0]} keeps only {best[1]}; shorten the prompts, or lower "
            f"min_kept_fraction (now {min_kept_fraction})"
        )
    return f"{head}: shorten the prompts, or lower min_kept_fraction (now {min_kept_fraction})"


def _count(n: int, unit: str) -> str:
    return f"{n} {unit.removesuffix('s') if n == 1 else unit}"
