"""The bridge from `transformers.Trainer` to the job row: metrics, heartbeats, cancel and pause, guards."""

import math
import time
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from backend.job.checkpoints import complete_checkpoints
from backend.job.lifecycle import beat, heartbeat, log_event, record_points, record_samples, update_job
from workers import shutdown
from workers.ranks import agree, any_rank, is_main
from workers.watch import answers

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


class ShuttingDown(Exception):
    """The worker was asked to stop (SIGTERM): training stopped at a checkpoint, and the job goes back to the
    queue for any worker to resume."""


# Weight of the newest loss in the smoothed loss the divergence guard compares against: a single noisy
# batch moves it little, a real trend moves it within ~10 steps.
SMOOTHING = 0.1
# Seconds between database beats during training (a module constant, so tests can beat at every step).
HEARTBEAT_SECONDS = 1.0
# Seconds between metric writes during training: the points logged meanwhile go in one transaction, so a step
# of a few milliseconds (a small model) does not pay for a write of its own (~5 ms with the dashboard's rollups).
# Evaluation points, a checkpoint and the end of training write at once.
METRIC_WRITE_SECONDS = 1.0
# An eval loss must beat the best by this fraction to count as progress for early stopping: a gain of
# 0.01% is float noise (or a plateau), not learning.
MIN_IMPROVEMENT = 1e-4
# The divergence guard also needs the loss this far (nats) above its best smoothed value.
MIN_SPIKE = 0.5
# Answering the watch prompts for less than this long never makes later evaluations skip them.
WATCH_FREE_SECONDS = 5.0


def check_in(job_id: int) -> None:
    """Renew the lease between preparation stages (tokenizing a large corpus takes a while); stop if cancelled."""
    # Data parallel: rank 0 asks, every rank gets its answer (see workers.ranks).
    # No progress yet: the header keeps the step the job is at (a resumed job's checkpoint step, not 0).
    if agree("stop" if is_main() and heartbeat(job_id, step=None, total_steps=None) else "run") == "stop":
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
    rollbacks: int = 0  # on divergence, go back to the last checkpoint at half the learning rate this many times

    def is_new(self, step: int) -> bool:
        """Whether a point at `step` is not stored yet. A fresh run stores every step, the step-0 evaluation of
        the base model included; a resumed (or rolled back) one only the steps after the last stored one."""
        return self.log_after == 0 or step > self.log_after


@dataclass
class OverfitWatch:
    """Notices overfitting: the eval loss rising `evals` evaluations in a row while the training loss falls.

    Either alone is no alarm: eval loss wobbles from one evaluation to the next, and a training loss that
    rises with it is a bad learning rate (the divergence guard's business). Both at once means the model is
    fitting its training examples at the expense of text it has not seen. The training loss compared is the
    mean of the points logged between two evaluations, which is far less noisy than any single batch."""

    evals: int | None = 3  # None: off
    _points: list[tuple[int, float, float | None]] = field(default_factory=list)  # (step, eval loss, train mean)
    _window: list[float] = field(default_factory=list)  # training losses since the last evaluation
    _warned: bool = False  # once per streak: the streak must break before the next warning

    def train_loss(self, loss: float) -> None:
        if math.isfinite(loss):
            self._window.append(loss)

    def eval_loss(self, step: int, loss: float) -> str | None:
        """Take an evaluation; the warning to log when this one completes a streak (else None)."""
        mean = sum(self._window) / len(self._window) if self._window else None
        self._window = []
        if not math.isfinite(loss) or (self._points and self._points[-1][0] == step):
            return None  # a repeated evaluation of the same weights (the closing eval) says nothing new
        self._points.append((step, loss, mean))
        if self.evals is None:
            return None
        streak = self._points[-self.evals - 1 :]
        rising = len(streak) == self.evals + 1 and all(a[1] < b[1] for a, b in pairwise(streak))
        if not rising:
            self._warned = False
            return None
        # The step-0 evaluation (the base model) has no training loss before it: compare the windows known.
        trained = [(s, t) for s, _, t in streak if t is not None]
        if self._warned or len(trained) < 2 or not trained[-1][1] < trained[0][1]:
            return None
        self._warned = True
        (first, first_eval, _), (last, last_eval, _) = streak[0], streak[-1]
        best = min(self._points, key=lambda p: p[1])
        return (
            f"Overfitting: eval loss rose {self.evals} evaluations in a row ({first_eval:.4f} at step {first} → "
            f"{last_eval:.4f} at step {last}) while the training loss fell ({trained[0][1]:.4f} → "
            f"{trained[-1][1]:.4f}): the model is memorizing its training examples. The lowest eval loss was "
            f"{best[1]:.4f} at step {best[0]}; fewer steps, a lower learning rate or more data would help "
            "(early_stopping_patience stops such a run by itself)."
        )


@dataclass
class Watch:
    """Watch prompts and how to ask them (SFT layout or raw text)."""

    prompts: tuple[str, ...] = ()
    sft: bool = False


class JobCallback(TrainerCallback):
    """Write every log point to the job's metrics, beat the lease, stop on cancel or pause (after a
    checkpoint), on divergence and on early stopping; answer the watch prompts at every eval.

    `outcome` says why training stopped early ("cancelled", "paused", "diverged", "early_stopped", or
    "rollback": `rollback_to` is the checkpoint to continue from at half the learning rate), `reason` says it in
    words for the events log."""

    def __init__(
        self,
        job_id: int,
        heartbeat_interval: float | None = None,
        guards: Guards | None = None,
        watch: Watch | None = None,
        checkpoint_minutes: float | None = None,
        overfit: OverfitWatch | None = None,
    ) -> None:
        self.job_id = job_id
        self.overfit = overfit or OverfitWatch(evals=None)
        # Also save when this long has passed since the last save, whatever checkpoint_steps says (None: never).
        self.checkpoint_seconds = checkpoint_minutes * 60 if checkpoint_minutes else None
        self._last_save = time.monotonic()
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
        self.rollback_to: Path | None = None
        self.rollbacks_used = 0
        self._next_peak: float | None = None
        # Set by a rollback: the peak learning rate to run at, applied once the Trainer has loaded the checkpoint.
        self._target_peak: float | None = None
        self._started = False
        # Logged points not yet written, and the job columns (final losses) to set with them.
        self._points: list[tuple[int, dict[str, float]]] = []
        self._final: dict[str, float] = {}
        self._last_write = time.monotonic()
        # Evaluations whose watch prompts are skipped: generation may not hold training up longer than the
        # evaluation it follows does (see _answer_watch_prompts).
        self._watch_skips = 0
        # Set by `train` around the final evaluation on the whole held-out set (the others read a sample).
        self.whole_set_evaluation = False
        self._answered_step: int | None = None

    @property
    def cancelled(self) -> bool:
        return self.outcome == "cancelled"

    def _stop(self, control: TrainerControl, outcome: str, reason: str, *, save: bool = False) -> None:
        if self.outcome is None:
            self.outcome, self.reason = outcome, reason
            level = {"diverged": "error", "rollback": "warning"}.get(outcome, "info")
            log_event(self.job_id, reason, level)
        control.should_training_stop = True
        # A pause must leave a checkpoint to resume from; a diverged model must not overwrite a good one.
        control.should_save = save or (control.should_save and outcome not in ("diverged", "rollback"))

    def _beat(
        self, state: TrainerState, control: TrainerControl, *, force: bool = False, step_end: bool = False
    ) -> None:
        # One short DB transaction per beat; throttled so fast steps (tiny models) don't hammer the database.
        now = time.monotonic()
        signal = "run"
        # Before a checkpoint is written the lease is checked too: a worker whose job was taken over by another
        # attempt must not write into its checkpoints (beat raises LeaseLost, which ends this run).
        if is_main() and (force or control.should_save or now - self._last_beat >= self.heartbeat_interval):
            self._last_beat = now
            signal = beat(self.job_id, step=state.global_step, total_steps=state.max_steps or None)
        if is_main() and signal == "run" and shutdown.requested():
            signal = "shutdown"
        # Data parallel: only rank 0 reads the flags (on its own clock); all ranks must stop at the same step.
        signal = agree(signal)
        if signal == "stop":
            self._stop(control, "cancelled", f"stopping at step {state.global_step} (cancel requested)")
        elif signal in ("pause", "shutdown") and step_end and self.outcome is None:
            # Only at a step's end, where the Trainer saves next: the checkpoint holds a whole step's state.
            if signal == "pause":
                self._stop(control, "paused", f"pausing at step {state.global_step}: saving a checkpoint", save=True)
            else:
                reason = f"worker shutting down at step {state.global_step}: saving a checkpoint"
                self._stop(control, "shutdown", reason, save=True)

    def on_train_begin(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        optimizer: torch.optim.Optimizer | None = None,
        lr_scheduler: Any = None,
        **kwargs: Any,
    ) -> None:
        # Called after the Trainer loaded any checkpoint: the step is the one this attempt really starts from
        # (the claim guessed the job's last reported step; a checkpoint may be older), for the ETA's pace.
        if not self._started:
            self._started = True
            update_job(self.job_id, start_step=state.global_step)
        self._last_save = time.monotonic()  # the interval counts from here: loading is not training time
        if self._target_peak is not None and optimizer is not None:
            # The checkpoint restored its own learning rate; a second rollback to the same checkpoint must go
            # on halving from the rate that diverged, not from the checkpoint's.
            loaded = peak_learning_rate(lr_scheduler) or args.learning_rate
            scale_learning_rate(optimizer, lr_scheduler, self._target_peak / loaded)
            self._target_peak = None
        # A cancel that arrived while the data was being prepared stops the run before its first step.
        self._beat(state, control, force=True)

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        self._save_if_due(control)
        self._beat(state, control, step_end=True)

    def _save_if_due(self, control: TrainerControl) -> None:
        """Ask for a checkpoint when checkpoint_minutes have passed since the last one (or since the start): a
        restart then loses at most that much work, however long a step takes."""
        if self.checkpoint_seconds is None:
            return
        due = is_main() and time.monotonic() - self._last_save >= self.checkpoint_seconds
        # Data parallel: all ranks must save at the same step (the save holds collectives), so rank 0's clock
        # alone decides and the others learn its answer (one int reduced per step).
        if any_rank(due):
            control.should_save = True

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        self._last_save = time.monotonic()
        self.write_points()  # the checkpoint's steps are plotted before anything resumes from it

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self.write_points()
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
        if self.whole_set_evaluation:
            eval_loss = None  # not comparable with the sampled evaluations the guards have seen
        if eval_loss is not None:
            warning = self.overfit.eval_loss(state.global_step, float(eval_loss))
            if warning and is_main():
                log_event(self.job_id, warning, "warning")
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
            and self.guards.is_new(state.global_step)  # at step 0 too: what the base model answers
            and is_main()  # generation needs no other rank, and only rank 0 stores the answers
        ):
            self._answer_watch_prompts(state, control, model, tokenizer, (metrics or {}).get("eval_runtime"))

    def _answer_watch_prompts(
        self, state: TrainerState, control: TrainerControl, model: Any, tokenizer: Any, eval_seconds: float | None
    ) -> None:
        """Answer the watch prompts, except at evaluations skipped so that generation (once it takes more than
        WATCH_FREE_SECONDS) costs no more than the evaluations themselves; the base model (step 0) and the end of
        the run are always answered."""
        if self._answered_step == state.global_step:
            return  # an early stop's step: answered at its sampled evaluation, before the whole set's
        ending = state.global_step == 0 or state.global_step >= state.max_steps or control.should_training_stop
        if self._watch_skips > 0 and not ending:
            self._watch_skips -= 1
            return
        began = time.monotonic()
        answered = answers(model, tokenizer, list(self.watch.prompts), sft=self.watch.sft)
        took = time.monotonic() - began
        record_samples(self.job_id, state.global_step, list(zip(self.watch.prompts, answered, strict=True)))
        self._answered_step = state.global_step
        if eval_seconds and took > max(eval_seconds, WATCH_FREE_SECONDS):
            skips = math.ceil(took / eval_seconds) - 1
            if skips and not self._watch_skips:
                log_event(
                    self.job_id,
                    f"watch prompts took {took:.1f} s to answer against {eval_seconds:.1f} s for the evaluation: "
                    f"answering them at every {skips + 1}th evaluation from now on (and at the end)",
                )
            self._watch_skips = skips

    def _check_divergence(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, loss: float, scheduler: Any
    ) -> None:
        step = state.global_step
        if not math.isfinite(loss):
            self._diverged(args, state, control, f"loss became {loss} at step {step}", scheduler)
            return
        if step <= self.guards.warmup_steps:
            return  # the loss is still meant to move fast, and the learning rate is still rising
        # A spike is a multiple of the best loss AND a real jump: a loss near 0 (DPO on easy pairs falls to
        # ~1e-4) moving from 0.001 to 0.01 is noise, not divergence.
        limit = max(self.guards.divergence_factor * self._best_smoothed, self._best_smoothed + MIN_SPIKE)
        if loss > limit:
            what = (
                f"loss spiked to {loss:.4g} at step {step}, over {self.guards.divergence_factor:g}x its best "
                f"smoothed value {self._best_smoothed:.4g}"
            )
            self._diverged(args, state, control, what, scheduler)
            return
        self._smoothed = loss if self._smoothed is None else (1 - SMOOTHING) * self._smoothed + SMOOTHING * loss
        self._best_smoothed = min(self._best_smoothed, self._smoothed)

    def _diverged(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, what: str, scheduler: Any
    ) -> None:
        """Roll back to the newest checkpoint at half the learning rate while rollbacks are left, else stop."""
        assert args.output_dir is not None  # declared optional; TrainingArguments.__post_init__ fills in a default
        checkpoint = checkpoint_before(Path(args.output_dir), state.global_step)
        if self.rollbacks_used < self.guards.rollbacks and checkpoint is not None and self.outcome is None:
            self.rollbacks_used += 1
            peak = peak_learning_rate(scheduler) or args.learning_rate
            reason = (
                f"{what}: rolled back to {checkpoint.name}, learning rate {peak:.3g} → {peak / 2:.3g} "
                f"(rollback {self.rollbacks_used} of {self.guards.rollbacks})"
            )
            self.rollback_to = checkpoint
            self._next_peak = peak / 2
            self._stop(control, "rollback", reason)
            return
        if not self.guards.rollbacks:
            advice = "stopping (try a lower learning rate)"
        elif checkpoint is None:
            advice = "no checkpoint to roll back to yet; stopping (try a lower learning rate or fewer checkpoint_steps)"
        else:
            advice = f"all {self.guards.rollbacks} rollbacks used; stopping (try a lower learning rate)"
        self._stop(control, "diverged", f"{what}; {advice}")

    def begin_rollback(self, state: TrainerState) -> Path:
        """Ready for the run from the checkpoint a divergence chose: the learning rate is halved once the
        Trainer has loaded it, and the steps re-run after it are not plotted twice. Returns the checkpoint."""
        assert self.rollback_to is not None, "no rollback was decided"
        checkpoint, self.rollback_to = self.rollback_to, None
        self.outcome, self.reason = None, ""
        self._target_peak = self._next_peak
        # The abandoned steps up to the divergence are already stored (the spike that caused it among them);
        # the re-run's points start after it, so every step keeps one point.
        self.guards.log_after = max(self.guards.log_after, state.global_step)
        return checkpoint

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
            loss = float(loss.item() if hasattr(loss, "item") else loss)
            self._check_divergence(args, state, control, loss, kwargs.get("lr_scheduler"))
            self.overfit.train_loss(loss)
        values = numeric_values(logs)
        if SUMMARY_KEYS & values.keys():
            # The end-of-run summary: its train_loss averages the whole run, which would be a misleading
            # last point on the loss curve, so it goes to the events log instead.
            runtime = values.get("train_runtime", 0.0)
            log_event(self.job_id, f"trained {state.global_step} steps in {runtime:.1f} s")
            return
        if not values or not self.guards.is_new(state.global_step):
            return  # nothing to plot, or a step the interrupted run already plotted
        self._points.append((state.global_step, values))
        final = {"final_loss": values.get("loss"), "final_eval_loss": values.get("eval_loss")}
        self._final |= {k: v for k, v in final.items() if v is not None}
        evaluation = any(key.startswith("eval_") for key in values)
        if evaluation or time.monotonic() - self._last_write >= METRIC_WRITE_SECONDS:
            self.write_points()

    def write_points(self) -> None:
        """Store the points logged since the last write (with the latest losses on the job row)."""
        self._last_write = time.monotonic()
        if self._points:
            points, self._points = self._points, []
            final, self._final = self._final, {}
            record_points(self.job_id, points, **final)


# --- rollback: back to a checkpoint, on at half the learning rate ----------------------------------------------


def checkpoint_before(output_dir: Path, step: int) -> Path | None:
    """The newest complete checkpoint in `output_dir` saved before `step` (None if there is none)."""
    earlier = [path for n, path in complete_checkpoints(output_dir) if n < step]
    return earlier[-1] if earlier else None


def _inner_scheduler(scheduler: Any) -> Any:
    return getattr(scheduler, "scheduler", scheduler)  # accelerate may wrap the torch scheduler


def peak_learning_rate(scheduler: Any) -> float | None:
    """The schedule's peak learning rate (its base: lr = base x warmup/decay factor of the step)."""
    base_lrs = getattr(_inner_scheduler(scheduler), "base_lrs", None)
    return float(base_lrs[0]) if base_lrs else None


def scale_learning_rate(optimizer: torch.optim.Optimizer, scheduler: Any, factor: float) -> None:
    """Multiply the learning rate, now and for the rest of the schedule, by `factor`.

    Loading a checkpoint restores both the optimizer's current lr and the scheduler's base_lrs, from which it
    recomputes every later lr (base x schedule factor): scaling only the optimizer would be undone at the next
    step, so both change here, after the load."""
    for group in optimizer.param_groups:
        group["lr"] *= factor
        if "initial_lr" in group:
            group["initial_lr"] *= factor
    inner = _inner_scheduler(scheduler)
    if inner is not None and hasattr(inner, "base_lrs"):
        inner.base_lrs = [lr * factor for lr in inner.base_lrs]
        # What get_last_lr() reports (the Trainer logs it) until the scheduler's next step recomputes it.
        inner._last_lr = [group["lr"] for group in optimizer.param_groups]
