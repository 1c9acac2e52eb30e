"""The studio's own cost per training step: the same short run through a plain `transformers.Trainer` and through
`workers.training.build_trainer` (the job callback's metric writes, heartbeats and guards, the token meter's counts
and MFU), on a real job row in an SQLite database. Target: at most 2% of step time.

Each repeat trains a freshly seeded `tiny` model (the preset the studio pretrains in seconds: its steps are the
shortest, so a fixed cost per step weighs most there) for the same fixed steps on the same random token blocks,
both trainers with the same TrainingArguments (the studio's own, checkpoints off: a save is not overhead). Runs
are interleaved (plain, studio, studio, plain, ...) so a slow spell of a shared machine hits both alike. A step's
time is measured from the start of the first step after a few warm-up steps to the end of training, so the work
after the last step (its logged point, the final beat) counts. The figure held to the target is the share of the
studio's step time spent inside its own code (`HookTimer`); the ratio of the two runs' step times is printed
beside it, a cross-check that on a busy machine is noisier than the overhead it measures. Prints BENCH lines and
writes tests/bench/results/overhead.json.

`test_mfu` measures the model FLOPs utilisation of `small` pretraining and of LoRA on it (tests/bench/results/mfu.json);
`test_torch_compile_pretrain` times `small` pretraining eager vs `torch.compile` (compile time included) on this
device, to decide whether the job option pays off here.

Environment: BENCH_OVERHEAD_PRESET (tiny), BENCH_OVERHEAD_STEPS (40), BENCH_OVERHEAD_REPEATS (5 pairs),
BENCH_COMPILE_STEPS (30), BENCH_MFU_STEPS (20).
"""

import dataclasses
import os
import statistics
import time
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch import nn
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    PrinterCallback,
    Trainer,
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
)

from backend.db import Job, session_scope
from backend.migrate import upgrade
from backend.model.presets import PRESETS
from tests.bench.support import write_result
from tests.workers.support import FIXTURES, add_dataset, add_user, studio_env
from tests.workers.tokenizers import byte_tokenizer
from workers.context import load_context
from workers.data import PadCollator
from workers.examples import Example
from workers.flops import device_peak
from workers.training import MeteredTrainer, build_trainer, model_flops_per_token, training_arguments

PRESET = os.environ.get("BENCH_OVERHEAD_PRESET", "tiny")
STEPS = int(os.environ.get("BENCH_OVERHEAD_STEPS", "40"))
REPEATS = int(os.environ.get("BENCH_OVERHEAD_REPEATS", "5"))
COMPILE_STEPS = int(os.environ.get("BENCH_COMPILE_STEPS", "30"))
MFU_STEPS = int(os.environ.get("BENCH_MFU_STEPS", "20"))
LINEARS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
WARMUP = 5  # steps left out of the timing: the first ones allocate the optimizer state and warm the allocator
BATCH, LENGTH = 8, 128
TARGET = 0.02


class Clock(TrainerCallback):
    """Seconds per step from the start of step WARMUP + 1 to the end of training (added last, so every other
    callback's end-of-step and end-of-run work falls inside)."""

    def __init__(self) -> None:
        self.began: float | None = None
        self.per_step = 0.0

    def on_step_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **_: Any) -> None:
        if state.global_step == WARMUP:
            self.began = time.perf_counter()

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **_: Any) -> None:
        assert self.began is not None and state.global_step > WARMUP
        self.per_step = (time.perf_counter() - self.began) / (state.global_step - WARMUP)


class HookTimer:
    """Wall time spent inside the studio's own code during the timed steps: every event of the job callback and the
    token meter, and the meter's per-batch count and per-point figures (all run on the training thread: the
    database writes too, synchronously unless the database is unreachable). A shared machine slows a step and
    these alike, so their share of the step is steadier than the difference of two runs' step times."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.seconds = 0.0

    def wrap(self, obj: object, name: str) -> None:
        inner = getattr(obj, name)

        def timed(*args: Any, **kwargs: Any) -> Any:
            began = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                if self.clock.began is not None:
                    self.seconds += time.perf_counter() - began

        setattr(obj, name, timed)  # an instance attribute: the Trainer's callback handler calls it by name


@pytest.fixture(scope="module")
def job_id(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A running pretraining job in a migrated SQLite database, as a worker would hold it while it trains."""
    data_dir = tmp_path_factory.mktemp("overhead")
    with studio_env(data_dir):
        upgrade()
        user_id = add_user("bench@example.com")
        dataset_id = add_dataset(user_id, FIXTURES / "fables.txt")  # the row a job needs; the data is made here
        with session_scope() as s:
            hp = {"max_steps": STEPS, "batch_size": BATCH, "max_length": LENGTH, "logging_steps": 1, "seed": 0}
            job = Job(
                owner_id=user_id,
                name="overhead",
                kind="pretrain",
                architecture=PRESET,
                method="full",
                objective="causal_lm",
                dataset_id=dataset_id,
                hyperparameters=hp,
                status="running",
            )
            s.add(job)
            s.flush()
            created = job.id
        yield created


def blocks(n: int, vocab: int) -> list[Example]:
    ids = torch.randint(0, vocab, (n, LENGTH), generator=torch.Generator().manual_seed(0)).tolist()
    return [{"input_ids": row, "labels": row} for row in ids]


def fresh_model(preset: str) -> LlamaForCausalLM:
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(**PRESETS[preset]))


def run(
    job: int, studio: bool, preset: str = PRESET, steps: int = STEPS, lora: bool = False, **overrides: Any
) -> tuple[float, float]:
    """Seconds per step of one short run (the studio's trainer, or a plain Trainer with the same arguments), and
    of them the seconds spent in the studio's own code (0 for the plain Trainer)."""
    ctx = load_context(job)
    ctx = dataclasses.replace(ctx, hp=ctx.hp.model_copy(update={"max_steps": steps}))
    model: nn.Module = fresh_model(preset)
    if lora:  # the studio's LoRA defaults: rank 8 on every linear layer of the blocks
        model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=LINEARS, task_type="CAUSAL_LM"))
    train_set = blocks(steps * BATCH, PRESETS[preset]["vocab_size"])
    args = dataclasses.replace(
        training_arguments(ctx, n_train=len(train_set), n_eval=0), save_strategy="no", **overrides
    )
    clock = Clock()
    hooks = HookTimer(clock)
    trainer: Trainer
    if studio:
        trainer, callback = build_trainer(ctx, model, byte_tokenizer(), train_set, [], args=args)
        assert isinstance(trainer, MeteredTrainer)
        meter = trainer.meter
        for obj in (callback, meter):
            for event in (name for name in dir(TrainerCallback) if name.startswith("on_")):
                hooks.wrap(obj, event)
        hooks.wrap(meter, "count")
        hooks.wrap(meter, "point")
        trainer.add_callback(clock)
    else:
        trainer = Trainer(model=model, args=args, data_collator=PadCollator(0), train_dataset=train_set)
        # What the studio removes too: with tqdm off the Trainer prints every log dict.
        trainer.remove_callback(PrinterCallback)
        trainer.add_callback(clock)
    trainer.train()
    return clock.per_step, hooks.seconds / (steps - WARMUP)


def test_studio_overhead_per_step(job_id: int) -> None:
    device_peak()  # measured once, as a worker does when it registers: not a cost of any step
    plain: list[float] = []
    studio: list[float] = []
    inside: list[float] = []  # share of each studio run's step time spent in the studio's own code
    for i in range(REPEATS):
        # ABBA: neither side always runs first (a warmer cache, a quieter spell).
        for use_studio in (False, True) if i % 2 == 0 else (True, False):
            per_step, hooks = run(job_id, use_studio)
            (studio if use_studio else plain).append(per_step)
            if use_studio:
                inside.append(hooks / per_step)
    base, ours = statistics.median(plain), statistics.median(studio)
    # Each pair ran back to back: its ratio is the least disturbed by a busy spell of a shared machine.
    difference = statistics.median(o / p for p, o in zip(plain, studio, strict=True)) - 1
    overhead = statistics.median(inside)

    def runs(times: list[float]) -> str:
        return ", ".join(f"{t * 1000:.2f}" for t in times)

    print()
    print(f"BENCH overhead {PRESET} {STEPS} steps x batch {BATCH} x {LENGTH}, {REPEATS} interleaved pairs")
    print(f"BENCH plain Trainer   {base * 1000:8.2f} ms/step (median; runs {runs(plain)})")
    print(f"BENCH studio trainer  {ours * 1000:8.2f} ms/step (median; runs {runs(studio)})")
    print(f"BENCH studio / plain  {difference:+8.2%} step time (median of the pairs' ratios)")
    print(
        f"BENCH studio overhead {overhead:8.2%} of step time in the studio's own code (median; runs "
        f"{', '.join(f'{x:.2%}' for x in inside)}; target <= {TARGET:.0%})"
    )
    write_result(
        "overhead",
        {
            "preset": PRESET,
            "steps": STEPS,
            "warmup_steps": WARMUP,
            "batch_size": BATCH,
            "max_length": LENGTH,
            "logging_steps": 1,
            "repeats": REPEATS,
            "plain_ms_per_step": [t * 1000 for t in plain],
            "studio_ms_per_step": [t * 1000 for t in studio],
            "plain_median_ms": base * 1000,
            "studio_median_ms": ours * 1000,
            "studio_vs_plain_fraction": difference,  # median over the pairs of studio / plain, minus 1
            "inside_fractions": inside,
            "overhead_fraction": overhead,  # median share of a studio step spent in the studio's own code
            "target_fraction": TARGET,
        },
    )
    assert overhead <= TARGET, f"the studio adds {overhead:.1%} to a step"


def test_mfu(job_id: int) -> None:
    """Model FLOPs utilisation of `small` pretraining and of LoRA on the same model, from the step time and the
    FLOPs per token the studio counts (a frozen weight 4, a trained one 6), against the peak matmul a worker
    measures at start. Full blocks, no padding: what the model's arithmetic reaches, before any data effects."""
    peak = device_peak()
    ctx = load_context(job_id)
    tokens_per_step = BATCH * LENGTH
    figures: dict[str, Any] = {"peak_flops_per_second": peak.flops_per_second, "peak_dtype": peak.dtype}
    for name, lora in (("small pretraining", False), ("small LoRA r=8, all linear layers", True)):
        model: nn.Module = fresh_model("small")
        if lora:
            model = get_peft_model(model, LoraConfig(r=8, target_modules=LINEARS, task_type="CAUSAL_LM"))
        per_token = model_flops_per_token(ctx, model)
        per_step, _ = run(job_id, True, preset="small", steps=MFU_STEPS, lora=lora)
        mfu = per_token * tokens_per_step / per_step / peak.flops_per_second
        figures[name] = {"flops_per_token": per_token, "ms_per_step": per_step * 1000, "mfu": mfu}
        print(
            f"BENCH {name}: {per_step * 1000:.0f} ms/step, {per_token / 1e6:.1f} MFLOP/token, "
            f"MFU {mfu:.1%} of {peak.flops_per_second / 1e9:.0f} GFLOP/s ({peak.dtype}, {peak.threads} threads)"
        )
    write_result("mfu", figures)


def test_torch_compile_pretrain(job_id: int) -> None:
    """`small` pretraining through the studio's trainer, eager vs torch.compile: the compiled run's wall time
    includes its compilation, since a job pays for it."""
    figures: dict[str, Any] = {"preset": "small", "steps": COMPILE_STEPS, "batch_size": BATCH, "max_length": LENGTH}
    for name, compile_ in (("eager", False), ("compiled", True)):
        began = time.perf_counter()
        per_step, _ = run(job_id, True, preset="small", steps=COMPILE_STEPS, torch_compile=compile_)
        wall = time.perf_counter() - began
        figures[name] = {"ms_per_step": per_step * 1000, "wall_seconds": wall}
        print(f"BENCH small pretrain {name:9s}: {per_step * 1000:8.1f} ms/step after warm-up, {wall:6.1f} s wall")
    eager, compiled = figures["eager"], figures["compiled"]
    figures["step_speedup"] = eager["ms_per_step"] / compiled["ms_per_step"]
    figures["wall_speedup"] = eager["wall_seconds"] / compiled["wall_seconds"]
    print(
        f"BENCH torch.compile: {figures['step_speedup']:.2f}x per step, {figures['wall_speedup']:.2f}x wall "
        f"({COMPILE_STEPS} steps, compilation included)"
    )
    write_result("torch_compile", figures)
