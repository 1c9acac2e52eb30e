"""How far a running analysis is, written to its row a few times a second at most.

The loops call the reporter once per record; it keeps a write (and its publish) for when a phase starts or
`PROGRESS_SECONDS` have passed, so the cost per record is one clock read, whatever the dataset's size.
"""

import logging
import time
from collections.abc import Callable

from backend.dataset.analysis import record_progress

log = logging.getLogger(__name__)

PROGRESS_SECONDS = 0.25  # a live bar moves smoothly enough at four writes a second

# (phase, records of that phase done so far): what the analysis loops call, once per record.
ProgressFn = Callable[[str, int], None]


def no_progress(phase: str, done: int) -> None:
    """The reporter of a computation no one follows (tests, scripts)."""


class Reporter:
    """Throttled progress of analysis `analysis_id`; `totals` maps each phase to the records it handles."""

    def __init__(
        self,
        analysis_id: int,
        totals: dict[str, int | None],
        every: float = PROGRESS_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.analysis_id = analysis_id
        self.totals = totals
        self.every = every
        self.clock = clock
        self.phase: str | None = None
        self.last = 0.0
        self.writes = 0

    def __call__(self, phase: str, done: int) -> None:
        now = self.clock()
        if phase == self.phase and now - self.last < self.every:
            return
        self.phase, self.last = phase, now
        self.writes += 1
        try:
            record_progress(self.analysis_id, phase=phase, done=done, total=self.totals.get(phase))
        except Exception as exc:  # progress is informative: a failed write must never fail the analysis
            log.warning("could not record the progress of analysis %s: %s", self.analysis_id, exc)
