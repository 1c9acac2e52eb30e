"""What each logged training point carries besides the Trainer's loss, learning rate and grad norm: token
counts, throughput, model FLOPs utilisation and memory."""

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import torch
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from workers.flops import Peak, device_peak
from workers.ranks import world_size

# A checkpoint's token counts, beside the Trainer's files: a resumed or rolled-back run continues from them.
TOKENS_FILE = "studio_tokens.json"
MB = 2**20
KB = 2**10
# Linux: writing "5" here sets the process's VmHWM (its peak resident memory) back to its current VmRSS.
CLEAR_REFS = Path("/proc/self/clear_refs")
STATUS = Path("/proc/self/status")


def reset_peak_memory() -> bool:
    """Start counting the peak memory afresh (at a job's start); False when this system cannot reset it."""
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
        return True
    try:
        CLEAR_REFS.write_text("5")
    except OSError:  # not Linux, or a kernel or sandbox that refuses it
        return False
    return True


def _status_bytes(*fields: str) -> dict[str, int]:
    """Sizes from /proc/self/status ("VmHWM:   123456 kB"), by field; empty off Linux."""
    try:
        lines = STATUS.read_text().splitlines()
    except OSError:
        return {}
    return {
        name: int(rest.split()[0]) * KB for name, _, rest in (line.partition(":") for line in lines) if name in fields
    }


def resident_peak_bytes() -> int | None:
    """The process's peak resident memory (VmHWM) since it started or since the last reset; None off Linux."""
    return _status_bytes("VmHWM").get("VmHWM")


class TokenMeter(TrainerCallback):
    """Token counts, throughput and memory for every logged training point.

    The trainer hands it each micro-batch (`count`); `point()` turns what accumulated since the previous point
    into metric values: `tokens_seen` (non-padding input tokens, cumulative), `supervised_tokens` (tokens whose
    prediction carries loss, cumulative), `tokens_per_second` (input tokens over the time spent in training
    steps, so evaluations and checkpoint saves do not count as slowness), `model_tflops` and `mfu` (below), and
    `memory_mb`: on a GPU the peak CUDA memory allocated since the previous point (what decides an out-of-memory
    error), on a CPU worker the process's resident memory. One key for both, so a chart compares runs; the job's
    device says which.

    `peak_memory_bytes` is the job's peak so far, counted from the meter's creation (the trainer's, once the
    model is loaded and wrapped; a resumed run counts from its resume): on a GPU the most CUDA memory allocated,
    on a CPU the process's peak resident memory (VmHWM, reset through /proc/self/clear_refs). Where that reset
    is refused, VmHWM would hold an earlier job's peak in a long-lived worker, so the meter keeps the largest
    resident memory it saw at its own points instead (a peak between two points goes unseen).

    Given the job's training FLOPs per token (`backend.job.estimate.flops_per_token`), a point also carries
    `model_tflops`, the model FLOP/s its tokens per second imply (in TFLOP/s, every process together), and `mfu`,
    model FLOPs utilisation: that figure over the device's measured matmul peak (`workers.flops`), times the
    processes of a data-parallel run. Padding is no model FLOP: only real tokens count, so padding shows as
    lost utilisation."""

    def __init__(self, flops_per_token: float | None = None, peak: Peak | None = None) -> None:
        self.flops_per_token = flops_per_token
        # Measured once per process (the worker did when it registered); only a meter that computes MFU needs it.
        self.peak = peak or (device_peak() if flops_per_token else None)
        self.tokens_seen = 0
        self.supervised_tokens = 0
        # [input, supervised] tokens since the previous point, kept on the batch's device: reading a GPU
        # number forces a sync, so it happens once per logged point, not once per micro-batch.
        self._pending: torch.Tensor | None = None
        self._seconds = 0.0
        self._step_began: float | None = None
        self._resettable = reset_peak_memory()
        self.peak_memory = 0  # bytes: the largest of the peaks read at each point

    def count(self, inputs: dict[str, Any]) -> None:
        """Add one micro-batch (the collated tensors, before the forward pass)."""
        ids, mask, labels = inputs.get("input_ids"), inputs.get("attention_mask"), inputs.get("labels")
        if ids is None:
            return
        n_input = mask.sum() if mask is not None else torch.tensor(ids.numel(), device=ids.device)
        if labels is not None and labels.dim() == 2:
            # Causal LMs shift the labels: position t predicts token t+1, so the first label never carries loss.
            n_supervised = (labels[:, 1:] != -100).sum()
        elif inputs.get("completion_mask") is not None:  # preference pairs: the answers' tokens
            n_supervised = inputs["completion_mask"].sum()
        else:
            n_supervised = torch.zeros((), dtype=torch.long, device=ids.device)
        counts = torch.stack([n_input.to(ids.device, torch.long), n_supervised.to(ids.device, torch.long)])
        self._pending = counts if self._pending is None else self._pending + counts

    def point(self, reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict[str, float]:
        """The values of one logged point; `reduce` sums a tensor over data-parallel processes."""
        pending = self._pending if self._pending is not None else torch.zeros(2, dtype=torch.long)
        if reduce is not None:
            pending = reduce(pending)
        n_input, n_supervised = (int(n) for n in pending.tolist())
        self._pending = None
        self.tokens_seen += n_input
        self.supervised_tokens += n_supervised
        values = {"tokens_seen": float(self.tokens_seen), "supervised_tokens": float(self.supervised_tokens)}
        if self._seconds > 0:
            values["tokens_per_second"] = n_input / self._seconds
            values |= self._utilisation(values["tokens_per_second"])
        self._seconds = 0.0
        if torch.cuda.is_available():
            interval_peak = torch.cuda.max_memory_allocated()
            values["memory_mb"] = interval_peak / MB
            # The next point reports its own interval's peak; the job's peak is the largest of them.
            torch.cuda.reset_peak_memory_stats()
            self.peak_memory = max(self.peak_memory, interval_peak)
        else:
            # One read of /proc/self/status gives both (psutil's Process costs ~0.3 ms a point; a tiny model's
            # step is a few tens of ms): psutil only where there is no such file.
            status = _status_bytes("VmRSS", "VmHWM")
            rss = status.get("VmRSS") or psutil.Process().memory_info().rss
            values["memory_mb"] = rss / MB
            peak = status.get("VmHWM") if self._resettable else None
            self.peak_memory = max(self.peak_memory, rss, peak or 0)
        values["peak_memory_bytes"] = float(self.peak_memory)
        return values

    def _utilisation(self, tokens_per_second: float) -> dict[str, float]:
        if not self.flops_per_token or self.peak is None:
            return {}
        model_flops = self.flops_per_token * tokens_per_second
        # The tokens are every process's together, the peak this process's own: a data-parallel rank runs in a
        # process of its own that measures its GPU, or on a CPU its share of the cores (`workers.distributed`).
        peak = self.peak.flops_per_second * world_size()
        return {"model_tflops": model_flops / 1e12, "mfu": model_flops / peak}

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        # A run from a checkpoint (resume or rollback) continues the counts saved with it.
        self._pending, self._seconds, self._step_began = None, 0.0, None
        assert args.output_dir is not None  # declared optional; TrainingArguments.__post_init__ fills in a default
        saved = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}" / TOKENS_FILE
        counts = json.loads(saved.read_text()) if state.global_step and saved.is_file() else {}
        self.tokens_seen = int(counts.get("tokens_seen", 0))
        self.supervised_tokens = int(counts.get("supervised_tokens", 0))

    def on_step_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self._step_began = time.perf_counter()

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        if self._step_began is not None:
            self._seconds += time.perf_counter() - self._step_began
            self._step_began = None

    def save(self, folder: Path) -> None:
        """Write the counts into checkpoint `folder`, while it is being saved (before its COMPLETE marker)."""
        # Normally nothing is pending here (the step was logged just before); counted if it is (logging_steps > 1).
        pending = [0, 0] if self._pending is None else [int(n) for n in self._pending.tolist()]
        counts = {
            "tokens_seen": self.tokens_seen + pending[0],
            "supervised_tokens": self.supervised_tokens + pending[1],
        }
        (folder / TOKENS_FILE).write_text(json.dumps(counts))
