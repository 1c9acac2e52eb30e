"""Evaluation metrics of language-model objectives: perplexity and the token accuracy of supervised positions."""

import math

import numpy as np
import torch
from transformers import EvalPrediction

# exp() of a loss above this overflows a float64; such a model is guessing among more tokens than exist anyway.
MAX_LOG_PERPLEXITY = 700.0


def perplexity(loss: float) -> float | None:
    """exp(mean cross-entropy): the number of equally likely tokens the model is choosing among."""
    return math.exp(loss) if math.isfinite(loss) and loss < MAX_LOG_PERPLEXITY else None


def argmax_logits(logits: torch.Tensor | tuple[torch.Tensor, ...], labels: torch.Tensor) -> torch.Tensor:
    """Each position's predicted token id: evaluation keeps these instead of batch x length x vocab logits."""
    if isinstance(logits, tuple):  # some models return (logits, past_key_values, ...)
        logits = logits[0]
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
