"""The bridge from `transformers.Trainer` to the job row: metrics, heartbeats, cooperative cancellation."""

import math
import time
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from backend.job.lifecycle import heartbeat, log_event, record_metrics, update_job

# Keys of the one summary dict the Trainer logs when `train()` returns; they describe the run, not a step.
SUMMARY_KEYS = frozenset(
    {"train_runtime", "train_samples_per_second", "train_steps_per_second", "total_flos", "train_loss"}
)


class Cancelled(Exception):
    """Training stopped early because someone asked the job to cancel."""


def check_in(job_id: int) -> None:
    """Renew the lease between preparation stages (tokenizing a large corpus takes a while); stop if cancelled."""
    if heartbeat(job_id, step=0, total_steps=None):
        raise Cancelled()


def numeric_values(logs: dict[str, Any]) -> dict[str, float]:
    """The finite numbers of a log dict, as floats (JSON has no NaN, and strings are not metrics)."""
    out: dict[str, float] = {}
    for key, value in logs.items():
        if hasattr(value, "item"):  # a 0-d tensor or numpy scalar
            value = value.item()
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if math.isfinite(value):
            out[key] = float(value)
    return out


class JobCallback(TrainerCallback):
    """Write every log point to the job's metrics, beat the lease, and stop when a cancel is requested."""

    def __init__(self, job_id: int, heartbeat_interval: float = 1.0) -> None:
        self.job_id = job_id
        self.heartbeat_interval = heartbeat_interval
        self.cancelled = False
        self._last_beat = -math.inf

    def _beat(self, state: TrainerState, control: TrainerControl, *, force: bool = False) -> None:
        # One short DB transaction per beat; throttled so fast steps (tiny models) don't hammer the database.
        now = time.monotonic()
        if not force and now - self._last_beat < self.heartbeat_interval:
            return
        self._last_beat = now
        if heartbeat(self.job_id, step=state.global_step, total_steps=state.max_steps or None):
            if not self.cancelled:
                log_event(self.job_id, f"stopping at step {state.global_step} (cancel requested)")
            self.cancelled = True
        if self.cancelled:
            control.should_training_stop = True

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        # A cancel that arrived while the data was being prepared stops the run before its first step.
        self._beat(state, control, force=True)

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        self._beat(state, control)

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self._beat(state, control, force=True)

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        values = numeric_values(logs or {})
        if SUMMARY_KEYS & values.keys():
            # The end-of-run summary: its train_loss averages the whole run, which would be a misleading
            # last point on the loss curve, so it goes to the events log instead.
            runtime = values.get("train_runtime", 0.0)
            log_event(self.job_id, f"trained {state.global_step} steps in {runtime:.1f} s")
            return
        if not values:
            return
        record_metrics(self.job_id, state.global_step, values)
        final = {"final_loss": values.get("loss"), "final_eval_loss": values.get("eval_loss")}
        final = {k: v for k, v in final.items() if v is not None}
        if final:
            update_job(self.job_id, **final)
