"""The bridge from `transformers.Trainer` to the job row: metrics, heartbeats, cancel and pause, guards."""

import math
import time
from dataclasses import dataclass
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from backend.job.lifecycle import beat, heartbeat, log_event, record_metrics, record_samples, update_job
from workers.watch import answer

# Keys of the one summary dict the Trainer logs when `train()` returns; they describe the run, not a step.
SUMMARY_KEYS = frozenset(
    {"train_runtime", "train_samples_per_second", "train_steps_per_second", "total_flos", "train_loss"}
)


class Cancelled(Exception):
    """Training stopped early because someone asked the job to cancel."""


class Paused(Exception):
    """Training stopped at a checkpoint because someone asked the job to pause."""


class Diverged(Exception):
    """The loss became NaN/inf or spiked far above its best: the job stops rather than train on garbage."""


# Weight of the newest loss in the smoothed loss the divergence guard compares against: a single noisy
# batch moves it little, a real trend moves it within ~10 steps.
SMOOTHING = 0.1
# Seconds between database beats during training (a module constant, so tests can beat at every step).
HEARTBEAT_SECONDS = 1.0
# An eval loss must beat the best by this fraction to count as progress for early stopping: a gain of
# 0.01% is float noise (or a plateau), not learning.
MIN_IMPROVEMENT = 1e-4


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


@dataclass
class Guards:
    """What stops a run early besides a person: divergence, early stopping, and the log points to skip."""

    warmup_steps: int = 0
    divergence_factor: float = 4.0
    patience: int | None = None  # evals without a lower eval loss before stopping; None: never
    log_after: int = 0  # a resumed run already stored the points up to this step


@dataclass
class Watch:
    """Watch prompts and how to ask them (SFT layout or raw text)."""

    prompts: tuple[str, ...] = ()
    sft: bool = False


class JobCallback(TrainerCallback):
    """Write every log point to the job's metrics, beat the lease, stop on cancel or pause (after a
    checkpoint), on divergence and on early stopping; answer the watch prompts at every eval.

    `outcome` says why training stopped early ("cancelled", "paused", "diverged", "early_stopped"), `reason`
    says it in words for the events log."""

    def __init__(
        self,
        job_id: int,
        heartbeat_interval: float | None = None,
        guards: Guards | None = None,
        watch: Watch | None = None,
    ) -> None:
        self.job_id = job_id
        self.heartbeat_interval = HEARTBEAT_SECONDS if heartbeat_interval is None else heartbeat_interval
        self.guards = guards or Guards()
        self.watch = watch or Watch()
        self.outcome: str | None = None
        self.reason = ""
        self._last_beat = -math.inf
        self._smoothed: float | None = None
        self._best_smoothed = math.inf
        self._best_eval = math.inf
        self._evals_without_gain = 0

    @property
    def cancelled(self) -> bool:
        return self.outcome == "cancelled"

    def _stop(self, control: TrainerControl, outcome: str, reason: str, *, save: bool = False) -> None:
        if self.outcome is None:
            self.outcome, self.reason = outcome, reason
            log_event(self.job_id, reason, "error" if outcome == "diverged" else "info")
        control.should_training_stop = True
        # A pause must leave a checkpoint to resume from; a diverged model must not overwrite a good one.
        control.should_save = save or (control.should_save and outcome != "diverged")

    def _beat(
        self, state: TrainerState, control: TrainerControl, *, force: bool = False, step_end: bool = False
    ) -> None:
        # One short DB transaction per beat; throttled so fast steps (tiny models) don't hammer the database.
        now = time.monotonic()
        if not force and now - self._last_beat < self.heartbeat_interval:
            return
        self._last_beat = now
        signal = beat(self.job_id, step=state.global_step, total_steps=state.max_steps or None)
        if signal == "stop":
            self._stop(control, "cancelled", f"stopping at step {state.global_step} (cancel requested)")
        elif signal == "pause" and step_end and self.outcome is None:
            # Only at a step's end, where the Trainer saves next: the checkpoint holds a whole step's state.
            self._stop(control, "paused", f"pausing at step {state.global_step}: saving a checkpoint", save=True)

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        # A cancel that arrived while the data was being prepared stops the run before its first step.
        self._beat(state, control, force=True)

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        self._beat(state, control, step_end=True)

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        # A pause asked for after the last step is moot: the run is complete (finish_job clears the flag).
        self._beat(state, control, force=True)

    def on_evaluate(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        metrics: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        eval_loss = (metrics or {}).get("eval_loss")
        if self.guards.patience is not None and eval_loss is not None and state.global_step > 0:
            if eval_loss < self._best_eval * (1 - MIN_IMPROVEMENT):
                self._best_eval, self._evals_without_gain = eval_loss, 0
            else:
                self._evals_without_gain += 1
            if self._evals_without_gain >= self.guards.patience:
                reason = (
                    f"early stopping at step {state.global_step}: eval loss has not improved on "
                    f"{self._best_eval:.4f} for {self._evals_without_gain} evaluations"
                )
                self._stop(control, "early_stopped", reason, save=True)  # the end of the run: keep it
        model, tokenizer = kwargs.get("model"), kwargs.get("processing_class")
        if (
            self.watch.prompts
            and model is not None
            and tokenizer is not None
            and state.global_step > self.guards.log_after
        ):
            answers = [(p, answer(model, tokenizer, p, sft=self.watch.sft)) for p in self.watch.prompts]
            record_samples(self.job_id, state.global_step, answers)

    def _check_divergence(self, state: TrainerState, control: TrainerControl, loss: float) -> None:
        step = state.global_step
        if not math.isfinite(loss):
            self._stop(control, "diverged", f"loss became {loss} at step {step}; stopping (try a lower learning rate)")
            return
        if step <= self.guards.warmup_steps:
            return  # the loss is still meant to move fast, and the learning rate is still rising
        limit = self.guards.divergence_factor * self._best_smoothed
        if loss > limit:
            reason = (
                f"loss spiked to {loss:.4g} at step {step}, over {self.guards.divergence_factor:g}x its best "
                f"smoothed value {self._best_smoothed:.4g}; stopping (try a lower learning rate)"
            )
            self._stop(control, "diverged", reason)
            return
        self._smoothed = loss if self._smoothed is None else (1 - SMOOTHING) * self._smoothed + SMOOTHING * loss
        self._best_smoothed = min(self._best_smoothed, self._smoothed)

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        logs = logs or {}
        if "loss" in logs:
            loss = logs["loss"]
            self._check_divergence(state, control, float(loss.item() if hasattr(loss, "item") else loss))
        values = numeric_values(logs)
        if SUMMARY_KEYS & values.keys():
            # The end-of-run summary: its train_loss averages the whole run, which would be a misleading
            # last point on the loss curve, so it goes to the events log instead.
            runtime = values.get("train_runtime", 0.0)
            log_event(self.job_id, f"trained {state.global_step} steps in {runtime:.1f} s")
            return
        if not values or state.global_step <= self.guards.log_after:
            return  # nothing to plot, or a step the interrupted run already plotted
        record_metrics(self.job_id, state.global_step, values)
        final = {"final_loss": values.get("loss"), "final_eval_loss": values.get("eval_loss")}
        final = {k: v for k, v in final.items() if v is not None}
        if final:
            update_job(self.job_id, **final)
