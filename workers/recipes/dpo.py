"""Placeholder while the dpo recipe is written (this session)."""

from workers.context import JobContext


def run(ctx: JobContext) -> None:
    raise NotImplementedError("dpo recipe not written yet")
