"""Placeholder while the classification recipe is written (this session)."""

from workers.context import JobContext


def run(ctx: JobContext) -> None:
    raise NotImplementedError("classification recipe not written yet")
