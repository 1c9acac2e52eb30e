"""Logits only where a label trains.

A causal LM's head (hidden size x vocabulary) and its cross-entropy run at every position of a batch, though a
prompt-masked fine-tune reads its loss at the response tokens only: the prompt, the chat template and the
padding or a packed row's tail are computed and thrown away. On a small model the head is a fifth or more of
the FLOPs (the `small` preset: 3.1M of its 13.7M matmul weights). transformers 5 lets a causal LM take
`logits_to_keep` as a boolean mask of positions (the head then runs on those only) and its loss take
`shift_labels` (the targets of those positions, already shifted), so the loss a step backpropagates is the one
the model computes on full logits: the same sum over the same supervised tokens, normalised the same way.
`supervised_logits_match` checks that on the loaded model before the first step: a model whose forward slices
positions another way must not train on misaligned targets.
"""

from collections.abc import Sequence
from itertools import islice

import torch
from torch import nn

from workers.data import PadCollator
from workers.examples import IGNORE_INDEX, Example

# Losses with and without the mask may differ by this much (fp32 sums in another order).
TOLERANCE = 1e-4


def supervised_only(labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """Model keywords that compute logits only at positions whose next token carries a label."""
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    return {"logits_to_keep": keep, "shift_labels": labels[:, 1:][keep[:, :-1]]}


def worth_it(labels: torch.Tensor) -> bool:
    """Whether some positions would be skipped (a pretraining row supervises every one: nothing to gain)."""
    return bool((labels[:, 1:] == IGNORE_INDEX).any())


@torch.no_grad()
def supervised_logits_match(model: nn.Module, examples: Sequence[Example], pad_token_id: int) -> tuple[bool, str]:
    """Whether this model's loss with logits at the supervised positions only equals its loss on full logits,
    on a few training examples that mask part of their labels. Returns (ok, what was compared)."""
    sample = list(islice((e for e in examples if IGNORE_INDEX in e["labels"][1:]), 3))
    if not sample:
        return True, "no example masks any label"
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in PadCollator(pad_token_id)(sample).items()}
    was_training = model.training
    model.eval()
    try:
        full = float(model(**batch, use_cache=False).loss)
        try:
            part = float(model(**batch, **supervised_only(batch["labels"]), use_cache=False).loss)
        except (RuntimeError, TypeError, ValueError, IndexError) as exc:
            return False, f"{type(exc).__name__}: {exc}"
    finally:
        model.train(was_training)
    gap = abs(full - part)
    return gap <= TOLERANCE * max(1.0, abs(full)), f"loss {full:.4f} on every position, gap {gap:.1e}"
