"""One recipe per training method: `run(ctx)` trains, writes the artifacts, or raises."""

from collections.abc import Callable

from workers.context import JobContext
from workers.recipes import classification, dpo, finetune, kto, pretrain

RECIPES: dict[str, Callable[[JobContext], None]] = {
    "pretrain": pretrain.run,  # kind pretrain: causal LM from random weights
    "finetune": finetune.run,  # kind finetune, objectives causal_lm (continued pretraining) and sft
    "dpo": dpo.run,
    "kto": kto.run,  # unpaired preference: answers marked desirable or undesirable
    "classification": classification.run,
}


def recipe_for(ctx: JobContext) -> Callable[[JobContext], None]:
    """The recipe of a job: its objective's own one, else its kind's."""
    name = ctx.objective if ctx.objective in RECIPES else ctx.kind
    if name not in RECIPES:
        raise ValueError(f"no recipe for job kind {ctx.kind!r} / objective {ctx.objective!r}")
    return RECIPES[name]
