"""Evaluation metrics of language-model objectives: perplexity, bits per byte and the token accuracy of supervised
positions."""

import math
from collections.abc import Sequence
from typing import cast

import numpy as np
import torch
from transformers import EvalPrediction, PreTrainedTokenizerBase

from workers.examples import IGNORE_INDEX

# The tokens-per-byte ratio is a property of the text and the tokenizer: a few thousand examples pin it down.
MAX_RATIO_EXAMPLES = 4000

# exp() of a loss above this overflows a float64; such a model is guessing among more tokens than exist anyway.
MAX_LOG_PERPLEXITY = 700.0


def perplexity(loss: float) -> float | None:
    """exp(mean cross-entropy): the number of equally likely tokens the model is choosing among."""
    return math.exp(loss) if math.isfinite(loss) and loss < MAX_LOG_PERPLEXITY else None


def argmax_logits(logits: torch.Tensor | tuple[torch.Tensor, ...], labels: torch.Tensor) -> torch.Tensor:
    """Each position's predicted token id: evaluation keeps these instead of batch x length x vocab logits."""
    if isinstance(logits, tuple):  # some models return (logits, past_key_values, ...)
        logits = logits[0]
    # Prompt tuning prepends its virtual tokens to the input, so the logits run that many positions longer than
    # the labels; the last labels.shape[1] positions are the ones that line up with the real tokens.
    if labels is not None and logits.shape[1] > labels.shape[1]:
        logits = logits[:, -labels.shape[1] :]
    return logits.argmax(dim=-1)


def token_accuracy(prediction: EvalPrediction) -> dict[str, float]:
    """Share of supervised positions whose greedy prediction is the label (SFT: the response tokens)."""
    predicted = np.asarray(prediction.predictions)
    labels = np.asarray(prediction.label_ids)
    # Logits at position t predict token t+1. Batches of different lengths were padded with -100 to one
    # width, predictions and labels alike, so padding is never a supervised position.
    predicted, target = predicted[:, :-1], labels[:, 1:]
    supervised = target != -100
    if not supervised.any():
        return {}
    return {"token_accuracy": float((predicted[supervised] == target[supervised]).mean())}


def tokens_per_byte(examples: Sequence[dict[str, list[int]]], tokenizer: PreTrainedTokenizerBase) -> float | None:
    """Supervised tokens per UTF-8 byte of the text they spell, over `examples` (an evaluation set).

    eval_loss is in nats per token, and a token is a different amount of text under each tokenizer: a run
    from scratch with a 2k-word tokenizer and a fine-tune of a base with 49k words cannot be compared by it.
    loss x tokens/byte / ln 2 is bits per byte of the validation text, which they can."""
    tokens = n_bytes = 0
    for example in examples[:MAX_RATIO_EXAMPLES]:
        labels = example.get("labels", example["input_ids"])
        run: list[int] = []
        # A causal LM predicts labels[1:] (position t predicts token t+1); contiguous runs decode as text.
        for label in [*labels[1:], IGNORE_INDEX]:
            if label != IGNORE_INDEX:
                run.append(label)
                continue
            if run:
                tokens += len(run)
                # decode is typed `str | list[str]` for every input; one flat sequence of ids decodes to a str.
                text = cast(str, tokenizer.decode(run, skip_special_tokens=True))
                n_bytes += len(text.encode())
                run = []
    return tokens / n_bytes if tokens and n_bytes else None


def bits_per_byte(loss: float, ratio: float) -> float | None:
    """A loss in nats per token as bits per byte of text, given the tokens per byte of that text."""
    return loss * ratio / math.log(2) if math.isfinite(loss) else None
