"""One recipe per job kind: `run(ctx)` trains, writes the artifacts, or raises."""

from collections.abc import Callable

from workers.context import JobContext
from workers.recipes import finetune, pretrain

RECIPES: dict[str, Callable[[JobContext], None]] = {
    "pretrain": pretrain.run,
    "finetune": finetune.run,
}
