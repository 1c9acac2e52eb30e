"""Token statistics of a dataset and the dry-run render of one record, through the trainer's own tokenization.

Both call `workers.examples.render_record`, the function the fine-tuning recipe builds its examples with, so
the numbers and the highlighted tokens are what training will see. Statistics stream over the records and
keep one length per record, so memory grows by a few bytes per record whatever the text sizes.
"""

import itertools
import math
import pkgutil
import random
from array import array
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from transformers import PreTrainedTokenizerBase

from backend.job.preflight import DataCheck, keep_curve, untrainable
from backend.method import registry
from workers.analysis.progress import ProgressFn, no_progress
from workers.examples import Rendered, render_record, token_pieces

HISTOGRAM_BUCKETS = 20
NEVER_FITS = -1  # a record with no token to learn from, at any max_length
# The Trainer draws batches in a random order; padding is estimated over one seeded shuffle like it.
SHUFFLE_SEED = 0


@dataclass
class Totals:
    records: int = 0
    roles: Counter[str] = field(default_factory=Counter)
    supervised: int = 0  # tokens that carry loss in what the trainer sees (after the cut at max_length)
    masked: int = 0  # tokens the trainer sees without loss
    lost: int = 0  # supervised tokens removed by the cut
    cut: int = 0  # tokens past max_length, supervised or not
    truncated: int = 0
    losing_some: int = 0
    losing_all: int = 0
    dropped: int = 0  # SFT records left with no supervised token: the trainer skips them
    lengths: array = field(default_factory=lambda: array("q"))  # whole records, before the cut
    kept: array = field(default_factory=lambda: array("q"))  # SFT examples as trained, after the cut
    fits: array = field(default_factory=lambda: array("q"))  # per record, the shortest max_length that keeps it

    def add_sft(self, rendered: Rendered, max_length: int) -> None:
        n = len(rendered.ids)
        self.truncated += n > max_length
        self.cut += max(0, n - max_length)
        seen = min(n, max_length)
        supervised = sum(rendered.trained[:max_length])
        lost = rendered.lost_supervised(max_length)
        self.fits.append(rendered.shortest_fit or NEVER_FITS)
        self.lost += lost
        if supervised == 0:
            # The trainer drops an example with nothing to learn: none of its tokens is seen.
            self.losing_all += lost > 0
            self.dropped += 1
            return
        self.losing_some += lost > 0
        self.supervised += supervised
        self.masked += seen - supervised
        self.kept.append(seen)


def histogram(lengths: np.ndarray, buckets: int = HISTOGRAM_BUCKETS) -> dict[str, list[int]]:
    """Equal-width integer buckets from 0 to the longest record: `buckets + 1` edges, `buckets` counts."""
    top = int(lengths.max()) if lengths.size else 0
    width = max(1, math.ceil((top + 1) / buckets))
    counts = np.bincount(np.minimum(lengths // width, buckets - 1), minlength=buckets)
    return {"edges": [i * width for i in range(buckets + 1)], "counts": [int(c) for c in counts]}


def padding_efficiency(lengths: array, batch_size: int) -> tuple[float, int]:
    """(real tokens / padded tokens, padded tokens) when examples are batched in a shuffled order and each
    batch is padded to its longest example, as the collator does."""
    order = list(lengths)
    random.Random(SHUFFLE_SEED).shuffle(order)
    padded = sum(max(b) * len(b) for b in (order[i : i + batch_size] for i in range(0, len(order), batch_size)))
    return (sum(order) / padded if padded else 0.0), padded


def packed_blocks(stream_tokens: int, max_length: int) -> tuple[int, int]:
    """(blocks, tokens in them) when `stream_tokens` are cut into blocks like `pack_blocks` does."""
    full, tail = divmod(stream_tokens, max_length)
    # pack_blocks keeps a short tail block unless it is a lone token (nothing to predict).
    if tail >= 2:
        return full + 1, full * max_length + tail
    return full, full * max_length


def _packed(objective: str) -> bool:
    """Whether the objective packs text into blocks (nothing cut) rather than cutting each example at max_length."""
    return registry.objective(objective).packed


def cut_summary(objective: str, cut: int, tokens: int, lost: int, max_length: int) -> str:
    """The tokens max_length cuts off, named in a sentence: how many, their share, how many carried loss."""
    if _packed(objective):
        return f"nothing is cut: records are packed whole into blocks of max_length={max_length} tokens"
    if not cut:
        return f"nothing is cut: every record fits in max_length={max_length} tokens"
    return (
        f"{cut:,} tokens ({cut / tokens:.1%}) beyond max_length={max_length} would be cut, {lost:,} of them supervised"
    )


def token_stats(
    tokenizer: PreTrainedTokenizerBase,
    records: Iterable[dict[str, Any]],
    *,
    objective: str,
    max_length: int,
    batch_size: int,
    progress: ProgressFn = no_progress,
) -> dict[str, Any]:
    """Counts, supervision, truncation, a length histogram, steps per epoch and packing efficiency, and the
    pre-flight check the job would run (`preflight`, a `backend.job.preflight.DataCheck`).
    `progress("tokenizing", records done)` is called before each record (it throttles itself)."""
    if (own := registry.objective(objective).dry_run) is not None:
        stats: Callable[..., dict[str, Any]] = pkgutil.resolve_name(own)
        return stats(tokenizer, records, max_length=max_length, batch_size=batch_size, progress=progress)
    cut = not _packed(objective)  # examples cut at max_length (SFT, KTO), or text packed into blocks
    totals = Totals()
    for number, record in enumerate(records, start=1):
        progress("tokenizing", number - 1)
        try:
            rendered = render_record(tokenizer, record, objective)
        except Exception as exc:
            raise ValueError(f"record {number - 1}: {exc}") from exc
        totals.records += 1
        totals.roles.update(rendered.roles)
        totals.lengths.append(len(rendered.ids))
        if cut:
            totals.add_sft(rendered, max_length)
    lengths = np.frombuffer(totals.lengths, dtype=np.int64) if totals.records else np.zeros(0, dtype=np.int64)
    if cut:
        examples = len(totals.kept)
        efficiency, _ = padding_efficiency(totals.kept, batch_size)
    else:
        # Packed: each record's tokens and its EOS go into one stream cut into blocks; every token is a target.
        examples, in_blocks = packed_blocks(int(lengths.sum()), max_length)
        totals.supervised = in_blocks
        totals.cut = int(lengths.sum()) - in_blocks  # at most the stream's lone last token
        efficiency = in_blocks / (examples * max_length) if examples else 0.0
    return {
        "records": totals.records,
        "objective": objective,
        "max_length": max_length,
        "batch_size": batch_size,
        "tokens": int(lengths.sum()),
        "tokens_by_role": dict(sorted(totals.roles.items())),
        "supervised_tokens": totals.supervised,
        "masked_tokens": totals.masked,
        "lost_supervised_tokens": totals.lost,
        "truncated_records": totals.truncated,
        "cut_tokens": totals.cut,
        "cut_summary": cut_summary(objective, totals.cut, int(lengths.sum()), totals.lost, max_length),
        "records_losing_some_supervised": totals.losing_some,
        "records_losing_all_supervised": totals.losing_all,
        "dropped_records": totals.dropped,
        "examples": examples,
        "steps_per_epoch": math.ceil(examples / batch_size),
        "packing_efficiency": round(efficiency, 4),
        "length": {
            "min": int(lengths.min()) if lengths.size else 0,
            "max": int(lengths.max()) if lengths.size else 0,
            "mean": round(float(lengths.mean()), 2) if lengths.size else 0.0,
            "p50": int(np.percentile(lengths, 50)) if lengths.size else 0,
            "p95": int(np.percentile(lengths, 95)) if lengths.size else 0,
        },
        "histogram": histogram(lengths),
        "preflight": _sft_check(totals, max_length) if cut else _packed_check(totals, max_length),
    }


def _sft_check(totals: Totals, max_length: int) -> dict[str, Any]:
    fits = [None if f == NEVER_FITS else f for f in totals.fits]
    return DataCheck(
        unit="records",
        total=totals.records,
        kept=len(totals.kept),
        max_length=max_length,
        keep_at=keep_curve(fits, max_length),
        untrainable=untrainable(fits),
        supervised_tokens=totals.supervised,
    ).model_dump()


def _packed_check(totals: Totals, max_length: int) -> dict[str, Any]:
    return DataCheck(
        unit="texts",
        total=totals.records,
        kept=totals.records if totals.supervised else 0,
        max_length=max_length,
        supervised_tokens=totals.supervised,
    ).model_dump()


@dataclass
class Walked:
    """What a recipe's own example builder made of every record: the numbers its pre-flight check reads."""

    records: int = 0
    kept: int = 0
    truncated: int = 0
    supervised: int = 0  # answer tokens the trainer learns from
    tokens: int = 0  # positions the trainer runs (a pair's prompt twice)
    same: int = 0  # examples whose two answers are identical (pairs)
    fits: list[int | None] = field(default_factory=list)
    lengths: array = field(default_factory=lambda: array("q"))


def _walk(
    build: Callable[[PreTrainedTokenizerBase, dict[str, Any], int], tuple[Any, bool, int | None]],
    sizes: Callable[[dict[str, Any]], tuple[int, int, int, bool]],
    tokenizer: PreTrainedTokenizerBase,
    records: Iterable[dict[str, Any]],
    max_length: int,
    progress: ProgressFn,
) -> Walked:
    """Every record through a recipe's `build(tokenizer, record, max_length)` → (example or None, cut, shortest
    fit); `sizes(example)` → (supervised tokens, positions run, longest sequence, answers identical)."""
    walked = Walked()
    for number, record in enumerate(records, start=1):
        progress("tokenizing", number - 1)
        try:
            example, cut, fit = build(tokenizer, record, max_length)
        except Exception as exc:
            raise ValueError(f"record {number - 1}: {exc}") from exc
        walked.records += 1
        walked.truncated += cut
        walked.fits.append(fit)
        if example is None:
            continue
        supervised, tokens, longest, same = sizes(example)
        walked.kept += 1
        walked.supervised += supervised
        walked.tokens += tokens
        walked.same += same
        walked.lengths.append(longest)
    return walked


def _walked_summary(
    objective: str, unit: str, walked: Walked, max_length: int, batch_size: int, *, pairs: bool
) -> dict[str, Any]:
    check = DataCheck(
        unit=unit,
        total=walked.records,
        kept=walked.kept,
        max_length=max_length,
        keep_at=keep_curve(walked.fits, max_length),
        supervised_tokens=walked.supervised,
        untrainable=untrainable(walked.fits),
        identical_pairs=walked.same if pairs else None,
    )
    return _summary(
        objective,
        walked.records,
        walked.kept,
        walked.tokens,
        walked.supervised,
        walked.truncated,
        walked.lengths,
        max_length,
        batch_size,
        check,
    )


def _pair_sizes(example: dict[str, Any]) -> tuple[int, int, int, bool]:
    prompt, chosen, rejected = (len(example[k]) for k in ("prompt_ids", "chosen_ids", "rejected_ids"))
    same = example["chosen_ids"] == example["rejected_ids"]
    return chosen + rejected, 2 * prompt + chosen + rejected, prompt + max(chosen, rejected), same


def _unpaired_sizes(example: dict[str, Any]) -> tuple[int, int, int, bool]:
    prompt, answer = len(example["prompt_ids"]), len(example["completion_ids"])
    return answer, prompt + answer, prompt + answer, False


def pair_stats(
    tokenizer: PreTrainedTokenizerBase,
    records: Iterable[dict[str, Any]],
    *,
    max_length: int,
    batch_size: int,
    progress: ProgressFn = no_progress,
) -> dict[str, Any]:
    """DPO's view of preference pairs, through the recipe's own `pair_example`: pairs kept at max_length, their
    answer tokens, identical pairs, and the pre-flight check."""
    from workers.recipes.dpo import pair_example  # trl comes with it: only for DPO dry runs

    walked = _walk(pair_example, _pair_sizes, tokenizer, records, max_length, progress)
    return _walked_summary("dpo", "pairs", walked, max_length, batch_size, pairs=True)


def class_stats(
    tokenizer: PreTrainedTokenizerBase,
    records: Iterable[dict[str, Any]],
    *,
    max_length: int,
    batch_size: int,
    progress: ProgressFn = no_progress,
) -> dict[str, Any]:
    """The classifier's view: each text tokenized as at inference and cut (never dropped), and the examples
    per class the pre-flight check needs."""
    records_n = truncated = tokens = 0
    classes: Counter[str] = Counter()
    lengths = array("q")
    for number, record in enumerate(records, start=1):
        progress("tokenizing", number - 1)
        n = len(tokenizer(record["text"])["input_ids"])
        records_n += 1
        truncated += n > max_length
        tokens += min(n, max_length)
        lengths.append(n)
        classes[str(record["label"])] += 1
    check = DataCheck(unit="records", total=records_n, kept=records_n, max_length=max_length, classes=dict(classes))
    return _summary(
        "classification", records_n, records_n, tokens, records_n, truncated, lengths, max_length, batch_size, check
    )


def _summary(
    objective: str,
    records: int,
    examples: int,
    tokens: int,
    supervised: int,
    truncated: int,
    lengths: array,
    max_length: int,
    batch_size: int,
    check: DataCheck,
) -> dict[str, Any]:
    """The statistics keys the estimate and the pages read, for objectives with their own example layout."""
    seen = np.frombuffer(lengths, dtype=np.int64) if len(lengths) else np.zeros(0, dtype=np.int64)
    return {
        "records": records,
        "objective": objective,
        "max_length": max_length,
        "batch_size": batch_size,
        "tokens": tokens,
        "supervised_tokens": supervised,
        "truncated_records": truncated,
        "dropped_records": records - examples,
        "examples": examples,
        "steps_per_epoch": math.ceil(examples / batch_size),
        "length": {
            "min": int(seen.min()) if seen.size else 0,
            "max": int(seen.max()) if seen.size else 0,
            "mean": round(float(seen.mean()), 2) if seen.size else 0.0,
            "p50": int(np.percentile(seen, 50)) if seen.size else 0,
            "p95": int(np.percentile(seen, 95)) if seen.size else 0,
        },
        "histogram": histogram(seen),
        "preflight": check.model_dump(),
    }


def unpaired_stats(
    tokenizer: PreTrainedTokenizerBase,
    records: Iterable[dict[str, Any]],
    *,
    max_length: int,
    batch_size: int,
    progress: ProgressFn = no_progress,
) -> dict[str, Any]:
    """KTO's view of rated answers, through the recipe's own `unpaired_example`: a record is kept when its final
    answer starts within max_length."""
    from workers.recipes.kto import unpaired_example  # trl comes with it: only for KTO dry runs

    walked = _walk(unpaired_example, _unpaired_sizes, tokenizer, records, max_length, progress)
    return _walked_summary("kto", "records", walked, max_length, batch_size, pairs=False)


def render_one(
    tokenizer: PreTrainedTokenizerBase,
    records: Iterable[dict[str, Any]],
    *,
    index: int,
    objective: str,
    max_length: int,
) -> dict[str, Any]:
    """Record `index` token by token as the trainer sees it: SFT examples are cut at max_length; causal_lm
    records are packed whole into blocks, so nothing of them is cut, but only their first max_length tokens
    (one block's worth) are returned: the rest (`later_block_tokens`) continue in the following blocks."""
    record = next(itertools.islice(records, index, index + 1), None)
    if record is None:
        raise IndexError(f"the dataset has no record {index}")
    rendered = render_record(tokenizer, record, objective)
    sft = not _packed(objective)
    total = len(rendered.ids)
    seen = min(total, max_length) if sft else total
    shown = min(total, max_length)
    ids, trained = rendered.ids[:shown], rendered.trained[:shown]
    supervised = sum(rendered.trained[:seen])
    return {
        "index": index,
        "objective": objective,
        "max_length": max_length,
        "tokens": [
            {"id": i, "text": text, "trained": t}
            for i, text, t in zip(ids, token_pieces(tokenizer, ids), trained, strict=True)
        ],
        "total_tokens": total,
        "supervised_tokens": supervised,
        "truncated": total > seen,
        # causal_lm: tokens past the first block, trained in later blocks and not returned here.
        "later_block_tokens": total - shown if not sft else 0,
        "lost_supervised_tokens": rendered.lost_supervised(seen),
        # An SFT example with no supervised token left is dropped: the trainer never sees it.
        "dropped": sft and supervised == 0,
    }
