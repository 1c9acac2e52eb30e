"""Packing a batch's examples into fewer rows, each example attending only to itself.

A batch padded to its longest example spends most of its compute on padding when lengths vary (Alpaca-style
data at max_length 256: ~60% real tokens). `PackingCollator` keeps the batch the Trainer drew (the same
examples, the same loss: a mean over the same supervised tokens) but lays it out in rows of up to max_length
tokens, several examples per row (as few rows as first-fit decreasing finds, filled evenly), with position ids
that restart at 0 for each example and no attention mask. transformers 5 reads restarting position ids as
packed sequences and builds a block-diagonal causal mask (sdpa, eager, flex) or varlen spans (FlashAttention-2),
so no token attends across an example's border; the first label of each example is -100, so no example is
trained to predict the next one's first token. `packing_preserves_losses` checks that on the loaded model
before the first step.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import islice

import torch
from torch import nn

from workers.examples import IGNORE_INDEX, Example

# The key under which a packed batch marks its real (non-padding) tokens for the token meter; the trainer
# takes it out before the batch reaches the model (see workers.training.MeteredTrainer).
REAL_TOKENS = "studio_real_tokens"
# Per-example losses, packed vs one per row, may differ by this much (fp32 sums in another order).
TOLERANCE = 1e-3


def pack_rows(lengths: Sequence[int], row_length: int) -> list[list[int]]:
    """Example indices grouped into as few rows of at most `row_length` tokens as first-fit decreasing finds
    (within 22% of the fewest possible), then spread evenly over that many rows: the batch is as wide as its
    fullest row, and first fit leaves one row full and the last nearly empty."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    rows: list[list[int]] = []
    room: list[int] = []
    for i in order:
        n = lengths[i]
        slot = next((r for r, free in enumerate(room) if free >= n), None)
        if slot is None:  # an example longer than a row (not cut by the recipe) gets a row of its own
            rows.append([i])
            room.append(row_length - n)
        else:
            rows[slot].append(i)
            room[slot] -= n
    # Longest first, each to the emptiest row (LPT): kept when its fullest row is narrower and within the length.
    even: list[list[int]] = [[] for _ in rows]
    totals = [0] * len(rows)
    for i in order:
        r = totals.index(min(totals))
        even[r].append(i)
        totals[r] += lengths[i]
    first_fit_width = max((row_length - free for free in room), default=0)
    if rows and max(totals) < first_fit_width and max(totals) <= row_length:
        return even
    return rows


@dataclass
class PackingCollator:
    """Collates a batch as packed rows: input_ids, labels, position_ids, and REAL_TOKENS for the meter."""

    pad_token_id: int
    row_length: int

    def __call__(self, features: list[Example]) -> dict[str, torch.Tensor]:
        rows = pack_rows([len(f["input_ids"]) for f in features], self.row_length)
        width = max(sum(len(features[i]["input_ids"]) for i in row) for row in rows)
        input_ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        positions = torch.zeros((len(rows), width), dtype=torch.long)
        real = torch.zeros((len(rows), width), dtype=torch.long)
        for r, row in enumerate(rows):
            offset = 0
            for i in row:
                ids = features[i]["input_ids"]
                n = len(ids)
                input_ids[r, offset : offset + n] = torch.tensor(ids)
                labels[r, offset : offset + n] = torch.tensor(features[i]["labels"])
                labels[r, offset] = IGNORE_INDEX  # the previous example's last token must not predict this one
                positions[r, offset : offset + n] = torch.arange(n)
                real[r, offset : offset + n] = 1
                offset += n
            # The padding tail restarts its positions too: a sequence of its own, seen by nothing real.
            positions[r, offset:] = torch.arange(width - offset)
        return {"input_ids": input_ids, "labels": labels, "position_ids": positions, REAL_TOKENS: real}


def padding_efficiency(lengths: Sequence[int], batch_size: int, row_length: int) -> tuple[float, float]:
    """(padded, packed): the share of real tokens in consecutive batches of `lengths`, padded to each batch's
    longest example vs packed into rows, for the events log."""
    real = sum(lengths)
    padded = packed = 0
    for start in range(0, len(lengths), batch_size):
        batch = lengths[start : start + batch_size]
        padded += max(batch) * len(batch)
        rows = pack_rows(batch, row_length)
        packed += max(sum(batch[i] for i in row) for row in rows) * len(rows)
    return (real / padded if padded else 1.0), (real / packed if packed else 1.0)


@torch.no_grad()
def per_example_losses(model: nn.Module, batch: dict[str, torch.Tensor], owners: torch.Tensor) -> list[float]:
    """Mean cross-entropy of each example's supervised tokens; `owners[r, t]` is the example whose label sits at
    row r, position t (-1 for none)."""
    inputs = {k: v for k, v in batch.items() if k not in ("labels", REAL_TOKENS)}
    # As in training (workers.training.MeteredTrainer): no key/value cache, which would turn packed masking off.
    logits = model(**inputs, use_cache=False).logits.float()
    labels = batch["labels"]
    # Position t predicts token t+1, as the model's own loss shifts them.
    losses = nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), reduction="none"
    ).view(labels.shape[0], -1)
    owner = owners[:, 1:]
    result = []
    for example in range(int(owners.max()) + 1):
        mine = (owner == example) & (labels[:, 1:] != IGNORE_INDEX)
        result.append(float(losses[mine].mean()) if mine.any() else math.nan)
    return result


def owners_of(batch: dict[str, torch.Tensor], first: int) -> torch.Tensor:
    """Which example each position belongs to, counting from `first`: a new example wherever positions restart."""
    positions = batch.get("position_ids")
    if positions is None:  # one example per row, padding after it
        mask = batch["attention_mask"]
        owners = torch.arange(first, first + mask.shape[0]).unsqueeze(1).expand_as(mask).clone()
        owners[mask == 0] = -1
        return owners
    real = batch[REAL_TOKENS] == 1
    # Padding tails restart their positions too: only a real token at position 0 begins an example.
    starts = ((positions == 0) & real).long()
    owners = starts.view(-1).cumsum(0).view_as(positions) - 1 + first
    owners[~real] = -1
    return owners


def packing_preserves_losses(model: nn.Module, examples: Sequence[Example], pad_token_id: int) -> tuple[bool, str]:
    """Whether this model, fed a packed row, gives each example the loss it gets alone (attention kept within
    each example). A model whose attention ignores restarting position ids would let examples see each other:
    training must then fall back to padding. Returns (ok, what was compared)."""
    sample = list(islice((e for e in examples if any(label != IGNORE_INDEX for label in e["labels"][1:])), 3))
    if len(sample) < 2:
        return True, "fewer than two supervised examples to compare"
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        row_length = sum(len(e["input_ids"]) for e in sample)  # all in one row
        packed = PackingCollator(pad_token_id, row_length)(sample)
        # Number the examples in the order the collator placed them, on both sides.
        order = pack_rows([len(e["input_ids"]) for e in sample], row_length)[0]
        together = per_example_losses(model, _to(packed, device), owners_of(packed, 0))
        alone = [
            per_example_losses(model, _to(single, device), owners_of(single, 0))[0]
            for single in (_one_row(sample[i], pad_token_id) for i in order)
        ]
    finally:
        model.train(was_training)
    worst = max(abs(a - b) for a, b in zip(together, alone, strict=True))
    return worst <= TOLERANCE * max(1.0, max(abs(a) for a in alone)), f"largest per-example loss gap {worst:.2e}"


def _one_row(example: Example, pad_token_id: int) -> dict[str, torch.Tensor]:
    n = len(example["input_ids"])
    return {
        "input_ids": torch.tensor([example["input_ids"]]),
        "labels": torch.tensor([example["labels"]]),
        "attention_mask": torch.ones((1, n), dtype=torch.long),
    }


def _to(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}
