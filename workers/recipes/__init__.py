"""One recipe per training objective (and job kind): `run(ctx)` trains, writes the artifacts, or raises. Which
module trains what is in backend/method/registry.py (each objective's `recipes`), the one list of them."""

import importlib
from collections.abc import Callable

from workers.context import JobContext


def recipe_for(ctx: JobContext) -> Callable[[JobContext], None]:
    """The recipe the registry names for the job's objective and kind."""
    module = ctx.objective_spec.recipes.get(ctx.kind)
    if module is None:
        raise ValueError(f"objective {ctx.objective!r} has no recipe for a {ctx.kind} job")
    run: Callable[[JobContext], None] = importlib.import_module(module).run
    return run
