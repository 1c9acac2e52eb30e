"""What both recipes share around `transformers.Trainer`: device and precision, the arguments, the run."""

import gc
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any, TypeVar

import torch
from peft import PeftModel, PeftType
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import (
    PreTrainedTokenizerBase,
    PrinterCallback,
    Trainer,
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
)
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

from backend.job.estimate import flops_per_token
from backend.job.lifecycle import last_metric_step, log_event, update_job
from backend.method.registry import packs_examples
from backend.method.shape import model_shape
from workers.checkpointing import remove_leftovers, save_whole
from workers.context import JobContext
from workers.data import PadCollator
from workers.eval_metrics import argmax_logits, bits_per_byte, perplexity, token_accuracy, tokens_per_byte
from workers.examples import Example
from workers.flops import lookup_weights
from workers.metrics import Cancelled, Diverged, Guards, JobCallback, OverfitWatch, Paused, ShuttingDown, Watch
from workers.packing import REAL_TOKENS, PackingCollator, packing_preserves_losses, padding_efficiency
from workers.ranks import is_main, per_device_batch_size, world_size
from workers.supervised_logits import supervised_logits_match, supervised_only, worth_it
from workers.token_meter import TokenMeter

T = TypeVar("T")


def use_bf16() -> bool:
    """bf16 autocast where the GPU supports it: fp32's exponent range (no loss scaling), half the memory."""
    # Pre-Ampere GPUs only emulate bf16 (slower than fp32), so emulation does not count.
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)


def device_description() -> str:
    """e.g. "cuda:0 NVIDIA H100 80GB HBM3", or "cpu"."""
    if torch.cuda.is_available():
        return f"cuda:0 {torch.cuda.get_device_name(0)}"
    return "cpu"


def weights_in(param: nn.Parameter) -> int:
    """How many weights a parameter holds: bitsandbytes packs 4-bit weights two per byte of its storage dtype
    (QLoRA), so numel() of such a tensor counts storage elements, not weights (as peft counts them)."""
    if type(param).__name__ == "Params4bit":
        storage = getattr(param, "quant_storage", None)
        return param.numel() * 2 * (storage.itemsize if storage is not None else 1)
    return param.numel()


def parameter_counts(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameters."""
    trainable = sum(weights_in(p) for p in model.parameters() if p.requires_grad)
    total = sum(weights_in(p) for p in model.parameters())
    return trainable, total


def total_steps(ctx: JobContext, n_train: int) -> int:
    """Optimizer steps the run will take, computed the way the Trainer does."""
    if ctx.hp.max_steps is not None:
        return ctx.hp.max_steps
    # Data parallel: each rank takes per-device batches in turn (accelerate evens them out), so a step still
    # consumes about batch_size examples in all.
    batches = math.ceil(math.ceil(n_train / per_device_batch_size(ctx.hp.batch_size)) / world_size())
    # An optimizer step sums the gradients of gradient_accumulation_steps batches; a last, shorter group of
    # batches at the epoch's end still makes a step.
    steps_per_epoch = math.ceil(batches / ctx.hp.gradient_accumulation_steps)
    return max(1, math.ceil((ctx.hp.epochs or 1.0) * steps_per_epoch))


# A save interval no run reaches: checkpoints only at the end (and on pause).
NEVER = 2**31 - 1

# Prefix tuning through an MLP (prefix_projection) saves in adapter_model.safetensors what the MLP makes of the
# prefixes, which is all inference needs but not what trains; a checkpoint also keeps the trainable encoder here.
PREFIX_ENCODER_FILE = "studio_prefix_encoder.safetensors"


def projected_prefix_encoder(model: nn.Module | None) -> nn.Module | None:
    """The trainable prefix encoder (embedding and MLP) of a prefix tuning adapter with prefix_projection."""
    if not isinstance(model, PeftModel):
        return None
    config = model.active_peft_config
    if config.peft_type != PeftType.PREFIX_TUNING or not getattr(config, "prefix_projection", False):
        return None
    encoder: nn.Module = model.prompt_encoder[model.active_adapter]
    return encoder


# Evaluations a run makes unless eval_steps says otherwise (the last one on the whole held-out set): enough
# points for a curve.
DEFAULT_EVALS = 10
# The smallest eval sample the budget may shrink to: fewer examples make one point too noisy to set against the
# previous one.
MIN_EVAL_SAMPLE = 16


@dataclass(frozen=True)
class EvalPlan:
    """When the run evaluates and on how much of the held-out set."""

    every: int | None  # steps between evaluations; None without a held-out set
    sample: int  # held-out examples each evaluation before the final one reads (a fixed, seeded sample)
    total: int  # held-out examples: the final evaluation reads them all
    note: str = ""  # what the budget changed, for the events log

    @property
    def sampled(self) -> bool:
        return self.sample < self.total


def eval_plan(ctx: JobContext, *, n_train: int, n_eval: int, sampled: bool = True) -> EvalPlan:
    """How often to evaluate and on how many examples, so that evaluation stays a small share of the run.

    Evaluations before the last read a fixed sample of at most eval_max_examples held-out examples; the last
    reads the whole set. With eval_steps empty the evaluations together (a fine-tune's base evaluation and the
    final one included) may cost eval_budget of the training compute: a short run with a large held-out set
    evaluates on a smaller sample (down to MIN_EVAL_SAMPLE), then fewer times. `sampled=False` (trl's trainers,
    which prepare their eval set when built): every evaluation reads the whole set, only the count may shrink."""
    hp = ctx.hp
    if n_eval == 0:
        return EvalPlan(None, 0, 0)
    steps = total_steps(ctx, n_train)
    sample = min(n_eval, hp.eval_max_examples) if sampled else n_eval
    if hp.eval_steps:
        return EvalPlan(hp.eval_steps, sample, n_eval)
    # An evaluated example costs one forward pass; a trained one forward and backward: about a third of a full
    # fine-tune's step, half of an adapter's (no weight gradients of the frozen base).
    ratio = 0.5 if ctx.method_spec.adapter else 1 / 3
    examples_trained = steps * hp.batch_size * hp.gradient_accumulation_steps
    affordable = hp.eval_budget * examples_trained / ratio  # held-out examples all evaluations may read
    remaining = affordable - n_eval  # after the final evaluation on the whole set
    # eval_on_start: counted on a resume too (which skips it), so every attempt plans the same sample and schedule
    base = 1 if ctx.kind == "finetune" else 0
    middle = min(DEFAULT_EVALS - 1, steps - 1)  # evaluations strictly before the last step
    if (middle + base) * sample > remaining:
        if sampled:
            share = int(max(0.0, remaining) // max(1, middle + base))
            sample = max(min(sample, MIN_EVAL_SAMPLE), min(sample, share))
        middle = min(middle, max(0, int(remaining // sample) - base))
    every = max(1, math.ceil(steps / (middle + 1)))
    note = ""
    if middle < min(DEFAULT_EVALS - 1, steps - 1) or sample < min(n_eval, hp.eval_max_examples):
        during = f"{middle} time{'s' if middle != 1 else ''}" if middle else "not at all"
        note = (
            f"evaluating {during} during the run on {sample} of {n_eval} held-out examples, and on all of them at "
            f"the end: a run of {steps} steps affords evaluations worth {hp.eval_budget:.0%} of its training "
            "compute (eval_budget; set eval_steps to choose yourself)"
        )
    return EvalPlan(every, sample, n_eval, note)


def eval_sample(ctx: JobContext, eval_set: Sequence[T], plan: EvalPlan) -> Sequence[T]:
    """The fixed sample the evaluations before the last read: the same examples at every one (and after a
    resume), so points on the curve differ only by the model."""
    if not plan.sampled:
        return eval_set
    return random.Random(ctx.hp.seed).sample(eval_set, plan.sample)


def training_arguments(ctx: JobContext, *, n_train: int, n_eval: int, sampled: bool = True) -> TrainingArguments:
    """Map the job's hyperparameters onto the Trainer's arguments."""
    hp = ctx.hp
    plan = eval_plan(ctx, n_train=n_train, n_eval=n_eval, sampled=sampled)
    has_eval = plan.every is not None
    cuda = torch.cuda.is_available()
    return TrainingArguments(
        output_dir=str(ctx.output_dir / "checkpoints"),
        max_steps=hp.max_steps or -1,  # -1: let num_train_epochs decide
        num_train_epochs=hp.epochs or 1.0,
        learning_rate=hp.learning_rate,
        lr_scheduler_type="linear",
        warmup_steps=hp.warmup_steps,
        weight_decay=hp.weight_decay,
        # batch_size is the whole step's batch: split over the data-parallel processes (1 outside one).
        per_device_train_batch_size=per_device_batch_size(hp.batch_size),
        per_device_eval_batch_size=per_device_batch_size(hp.batch_size),
        logging_steps=hp.logging_steps,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=plan.every,
        # A fine-tune evaluates its base model before the first step (logged at step 0), so its curve answers
        # "would the base model, prompted, have done as well?". Not on a resume: that point is stored already.
        eval_on_start=has_eval and ctx.kind == "finetune" and ctx.resume_checkpoint is None,
        # Eval needs only the loss, except SFT's token accuracy, which keeps each position's argmax (never the
        # batch x length x vocab logits: see preprocess_logits_for_metrics in build_trainer).
        # Only token accuracy needs the predictions kept (as argmax ids); other objectives evaluate their loss.
        prediction_loss_only="eval_token_accuracy" not in ctx.objective_spec.metrics,
        gradient_accumulation_steps=hp.gradient_accumulation_steps,
        # Recompute each block's activations in the backward pass instead of keeping them. Non-reentrant
        # checkpointing also works when no input needs a gradient (LoRA's frozen embeddings).
        activation_checkpointing=hp.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False} if hp.gradient_checkpointing else None,
        torch_compile=hp.torch_compile,
        # The Trainer would log a NaN/inf loss as the average of earlier ones, hiding it from the divergence
        # guard: a model whose weights became NaN would go on "training" at a plausible loss.
        logging_nan_inf_filter=False,
        # Always "steps": the Trainer then also saves at the last step, and a pause saves wherever it lands.
        save_strategy="steps",
        save_steps=hp.checkpoint_steps or NEVER,
        # Checkpoints carry optimizer state (3x the weights for AdamW): keep the last few, not all of them.
        save_total_limit=hp.keep_checkpoints,
        seed=hp.seed,
        bf16=use_bf16(),
        use_cpu=not cuda,
        ddp_backend="gloo" if world_size() > 1 and not cuda else None,  # NCCL needs GPUs; accelerate may pick MPI
        # Every trainable weight gets a gradient at every step: DDP need not search the graph for unused ones.
        ddp_find_unused_parameters=False,
        dataloader_num_workers=0,  # examples are in-memory lists; worker processes would only add forks
        remove_unused_columns=False,  # the collator already yields exactly what the model takes
        report_to="none",
        disable_tqdm=True,
    )


class MeteredTrainer(Trainer):
    """A Trainer whose logged training points also carry token counts, tokens per second and memory
    (`workers.token_meter.TokenMeter`), whose eval points carry perplexity and bits per byte when the loss is
    a language model's, and whose checkpoints are written whole or not at all (`workers.checkpointing`)."""

    # While a checkpoint is being saved: the staging folder the Trainer's own save writes into.
    _staging: Path | None = None
    # The whole held-out set, when the evaluations during the run read a sample of it: the final one reads this.
    final_eval_dataset: Sequence[Example] | None = None
    # How many held-out examples the evaluation being logged read (eval points carry it as eval_examples).
    _evaluated: int | None = None
    # Logits at the supervised positions only (workers.supervised_logits), where build_trainer found it safe.
    supervised_logits = False

    def __init__(
        self,
        *args: Any,
        meter: TokenMeter,
        perplexity: bool = False,
        tokens_per_byte: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.meter = meter
        self.report_perplexity = perplexity
        self.tokens_per_byte = tokens_per_byte

    def training_step(
        self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch: torch.Tensor | int | None = None
    ) -> torch.Tensor:
        real = inputs.get(REAL_TOKENS)
        # A packed batch has no attention mask: its real-token mask tells the meter what is padding.
        self.meter.count(inputs if real is None else {**inputs, "attention_mask": real})
        return super().training_step(model, inputs, num_items_in_batch)

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> Any:
        labels = inputs.get("labels")
        # An evaluation that scores token accuracy needs every position's logits.
        wants_logits = return_outputs and not self.args.prediction_loss_only
        if self.supervised_logits and not wants_logits and labels is not None and worth_it(labels):
            inputs = {**inputs, **supervised_only(labels)}
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    def _prepare_inputs(self, inputs: dict[str, Any]) -> dict[str, Any]:
        # Training and evaluation both pass here before the model: the meter's mask is not the model's input.
        if REAL_TOKENS not in inputs:
            return super()._prepare_inputs(inputs)
        # A packed batch must not open a key/value cache (transformers does whenever use_cache is on, training
        # included): with one, the attention mask ignores where packed examples begin and end.
        packed = {k: v for k, v in inputs.items() if k != REAL_TOKENS}
        return super()._prepare_inputs({**packed, "use_cache": False})

    def evaluate(self, eval_dataset: Any = None, *args: Any, **kwargs: Any) -> dict[str, float]:
        evaluated = eval_dataset if eval_dataset is not None else self.eval_dataset
        self._evaluated = len(evaluated) if evaluated is not None and hasattr(evaluated, "__len__") else None
        try:
            return super().evaluate(eval_dataset, *args, **kwargs)
        finally:
            self._evaluated = None

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:  # a training point (an eval point has eval_loss, the end-of-run summary train_loss)
            # Data parallel: each process counted its own share of the batches; the point reports their sum.
            logs.update(self.meter.point(lambda t: self.accelerator.reduce(t.to(self.args.device), reduction="sum")))
        if self._evaluated is not None and "eval_loss" in logs:
            logs["eval_examples"] = float(self._evaluated)
        if self.report_perplexity and "eval_loss" in logs:
            value = perplexity(logs["eval_loss"])
            if value is not None:
                logs["eval_perplexity"] = value
            bpb = bits_per_byte(logs["eval_loss"], self.tokens_per_byte) if self.tokens_per_byte else None
            if bpb is not None:
                logs["eval_bits_per_byte"] = bpb
        super().log(logs, start_time)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        encoder = projected_prefix_encoder(model if model is not None else self.model)
        saved = Path(resume_from_checkpoint) / PREFIX_ENCODER_FILE
        if encoder is None or not saved.is_file():
            super()._load_from_checkpoint(resume_from_checkpoint, model)
            return
        # The adapter file's prefixes (the MLP's output) have no place in the trainable encoder: load it whole.
        device = next(encoder.parameters()).device
        encoder.load_state_dict(load_file(str(saved), device=str(device)))

    def _get_output_dir(self, trial: Any) -> str:
        # The Trainer's save puts checkpoint-<step> under this folder: the staging one while a save is under way.
        return str(self._staging) if self._staging is not None else super()._get_output_dir(trial)

    def _save_checkpoint(self, model: nn.Module, trial: Any) -> None:
        trainer_save = super()._save_checkpoint  # the Trainer's (or trl's) save, files and layout unchanged
        root = Path(super()._get_output_dir(trial))

        def write(staging: Path) -> None:
            self._staging = staging
            try:
                trainer_save(model, trial)
            finally:
                self._staging = None
            if self.args.should_save:  # data parallel: the counts are rank 0's to write, like the weights
                folder = staging / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
                self.meter.save(folder)
                encoder = projected_prefix_encoder(self.model)
                if encoder is not None:
                    state = {k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()}
                    save_file(state, str(folder / PREFIX_ENCODER_FILE))

        def rotate() -> None:
            # The Trainer rotated inside the staging folder (alone there, nothing to delete): rotate among the
            # real checkpoints now that the new one is one of them.
            rotate_checkpoints(
                str(root),
                save_total_limit=self.args.save_total_limit,
                best_model_checkpoint=self.state.best_model_checkpoint,
                use_mtime=True,
            )

        assert self.model is not None  # declared optional (model_init); a checkpoint is saved while training it
        save_whole(root, self.state.global_step, write, model=self.model, writer=self.args.should_save, rotate=rotate)


def metered(trainer_class: type[Trainer]) -> type[MeteredTrainer]:
    """`trainer_class` with MeteredTrainer's additions: a recipe may bring its own Trainer (trl's DPOTrainer)."""
    if issubclass(trainer_class, MeteredTrainer):
        return trainer_class
    return type(f"Metered{trainer_class.__name__}", (MeteredTrainer, trainer_class), {})


def build_trainer(
    ctx: JobContext,
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    train_set: Sequence[Example],
    eval_set: Sequence[Example],
    *,
    trainer_class: type[Trainer] = Trainer,
    **options: Any,
) -> tuple[Trainer, JobCallback]:
    """A Trainer wired to the job: metrics and heartbeats go to the database through the callback.

    `trainer_class` (a subclass such as trl's DPOTrainer) and `options` (its keywords: `args`, `data_collator`,
    `compute_metrics`, `ref_model`, ...) replace the defaults below; the callback and its guards stay.
    """
    if not train_set:
        raise ValueError("no training examples left after tokenization; check the dataset and max_length")
    guards = Guards(
        warmup_steps=ctx.hp.warmup_steps,
        divergence_factor=ctx.hp.divergence_factor,
        patience=ctx.hp.early_stopping_patience,
        # A resumed run repeats the steps between its checkpoint and where it stopped: plot each step once.
        log_after=last_metric_step(ctx.job_id) if ctx.resume_checkpoint else 0,
        rollbacks=ctx.hp.divergence_rollbacks,
    )
    # Watch prompts are asked in the layout the objective trained in: chat turns for SFT, DPO and KTO.
    watch = Watch(prompts=ctx.watch_prompts, sft=ctx.objective_spec.chat)
    callback = JobCallback(
        ctx.job_id,
        guards=guards,
        watch=watch,
        checkpoint_minutes=ctx.hp.checkpoint_minutes,
        overfit=OverfitWatch(evals=ctx.hp.overfit_warning_evals),
    )
    meter = TokenMeter(flops_per_token=model_flops_per_token(ctx, model))
    pad_id = tokenizer.pad_token_id
    assert pad_id is not None, "the recipe must give the tokenizer a pad token"
    next_token = "eval_perplexity" in ctx.objective_spec.metrics
    # trl's trainers prepare their eval set when built: their evaluations read it whole (see eval_plan).
    sampled = trainer_class is Trainer
    plan = eval_plan(ctx, n_train=len(train_set), n_eval=len(eval_set), sampled=sampled)
    if plan.note and is_main():
        log_event(ctx.job_id, plan.note)
    defaults: dict[str, Any] = {
        "model": model,
        "args": training_arguments(ctx, n_train=len(train_set), n_eval=len(eval_set), sampled=sampled),
        "data_collator": collator(ctx, model, train_set, pad_id) if "data_collator" not in options else None,
        "train_dataset": train_set,  # a list is a map-style dataset
        "eval_dataset": eval_sample(ctx, eval_set, plan) or None,
        "processing_class": tokenizer,
        "callbacks": [callback, meter],
        "meter": meter,
        # Perplexity is exp(cross-entropy per token): it means something for next-token losses only. So do bits
        # per byte, the tokenizer-independent form that lets a run from scratch face a fine-tuned base.
        "perplexity": next_token,
        "tokens_per_byte": tokens_per_byte(eval_set, tokenizer) if eval_set and next_token else None,
    }
    if "eval_token_accuracy" in ctx.objective_spec.metrics:
        # Token accuracy on the response tokens; the Trainer keeps each batch's argmax, not its logits.
        defaults |= {"compute_metrics": token_accuracy, "preprocess_logits_for_metrics": argmax_logits}
    trainer = metered(trainer_class)(**(defaults | options))
    # DataParallel (several GPUs, one process) would split the kept targets unlike the batch: not there.
    if trainer_class is Trainer and trainer.args.n_gpu <= 1:
        trainer.supervised_logits = supervised_logits(ctx, model, train_set, pad_id)
    # With tqdm disabled the Trainer prints every log dict to stdout; the database already holds them all.
    trainer.remove_callback(PrinterCallback)
    if plan.sampled:
        trainer.final_eval_dataset = eval_set
        trainer.add_callback(FinalEvalOnWholeSet())
    return trainer, callback


def collator(ctx: JobContext, model: nn.Module, train_set: Sequence[Example], pad_id: int) -> Any:
    """Packed rows where the job allows it and this model keeps packed examples apart, else padded rows."""
    padded = PadCollator(pad_id)
    if not ctx.hp.packing or not packs_examples(ctx.kind, ctx.method, ctx.objective):
        if ctx.hp.packing and ctx.objective_spec.packs_examples and is_main():
            log_event(ctx.job_id, f"packing off: {ctx.method}'s virtual tokens go before a whole row, not each example")
        return padded
    ok, compared = packing_preserves_losses(model, train_set, pad_id)
    if not ok:
        # Attention leaking across examples would train each on its neighbours' text, silently.
        if is_main():
            log_event(
                ctx.job_id,
                f"packing off: this model's attention does not keep packed examples apart ({compared}); "
                "batches are padded instead",
                "warning",
            )
        return padded
    lengths = [len(e["input_ids"]) for e in train_set]
    before, after = padding_efficiency(lengths, per_device_batch_size(ctx.hp.batch_size), ctx.hp.max_length)
    if is_main():
        log_event(
            ctx.job_id,
            f"packing each batch into rows of up to {ctx.hp.max_length} tokens: {after:.0%} of the tokens computed "
            f"are real instead of {before:.0%} padded (same examples and loss per step; packing=false turns it off)",
        )
    return PackingCollator(pad_id, row_length=ctx.hp.max_length)


def supervised_logits(ctx: JobContext, model: nn.Module, train_set: Sequence[Example], pad_id: int) -> bool:
    """Whether the head may run at the supervised positions only: rows of next-token labels aligned with the
    inputs (not behind prompt or prefix tuning's virtual tokens), shapes that stay put for torch.compile, and the
    model's loss unchanged by it."""
    if not packs_examples(ctx.kind, ctx.method, ctx.objective) or ctx.hp.torch_compile:
        return False
    ok, compared = supervised_logits_match(model, train_set, pad_id)
    if not ok and is_main():
        log_event(ctx.job_id, f"logits computed at every position: this model's loss changes without them ({compared})")
    return ok


class FinalEvalOnWholeSet(TrainerCallback):
    """Skips the Trainer's evaluation at the last step when `train` evaluates the whole held-out set there next
    (the evaluations before read a sample of it): one eval point per step."""

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        if state.global_step >= state.max_steps:
            control.should_evaluate = False


def train(trainer: Trainer, callback: JobCallback, resume_from: Path | None = None) -> None:
    """Run the loop (continuing from checkpoint `resume_from`: weights, optimizer, scheduler, RNG and step);
    raise Cancelled, Paused or Diverged if it stopped for that; end with an eval of the final weights.

    A divergence with rollbacks left (`divergence_rollbacks`) runs the loop again from the last checkpoint, at
    half the learning rate (see JobCallback.begin_rollback)."""
    if resume_from is not None:
        log_event(callback.job_id, f"resuming from {resume_from.name}")
    if is_main():
        # A save cut short by a crash left a staging folder (or, before staging, a partial checkpoint).
        assert trainer.args.output_dir is not None  # declared optional; TrainingArguments.__post_init__ fills it
        removed = remove_leftovers(Path(trainer.args.output_dir))
        if removed:
            log_event(callback.job_id, f"removed what an interrupted save left: {', '.join(removed)}")
    checkpoint = resume_from
    while True:
        try:
            trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
        finally:
            # An error mid-loop (out of memory, a lost lease) must not take the last points, the ones that
            # explain it, with it.
            callback.write_points()
        if callback.outcome != "rollback":
            break
        checkpoint = callback.begin_rollback(trainer.state)
        trainer.args.eval_on_start = False  # the base model was evaluated once, before the first run
        # A fresh optimizer and scheduler, which the Trainer fills from the checkpoint (moments, step, schedule)
        # before the callback halves the learning rate; the old ones would be wrapped by accelerate twice.
        trainer.optimizer, trainer.lr_scheduler = None, None
    if callback.outcome == "cancelled":
        raise Cancelled()
    if callback.outcome == "paused":
        raise Paused(f"paused at step {trainer.state.global_step}")
    if callback.outcome == "shutdown":
        raise ShuttingDown(f"worker shutting down at step {trainer.state.global_step}")
    if callback.outcome == "diverged":
        raise Diverged(callback.reason)
    evaluated = [e["step"] for e in trainer.state.log_history if "eval_loss" in e]
    # A list is a map-style dataset to the Trainer, whose annotation names torch's Dataset class only.
    whole: Any = trainer.final_eval_dataset if isinstance(trainer, MeteredTrainer) else None
    if whole is not None:
        # The evaluations during the run read a sample: the final one, which final_eval_loss reports, reads all.
        # Its loss is on other examples than the curve's: the guards that compare evaluations leave it out.
        callback.whole_set_evaluation = True
        trainer.evaluate(whole)
    elif trainer.eval_dataset is not None and (not evaluated or evaluated[-1] != trainer.state.global_step):
        trainer.evaluate()  # logs eval_loss at the last step, so final_eval_loss describes the saved model


def model_flops_per_token(ctx: JobContext, model: nn.Module) -> float:
    """Training FLOPs per token of `model` as it will train (frozen weights, the embedding lookup), by the same
    accounting as the estimate before launch, so estimate, compare page, run and its MFU agree."""
    trainable, total = parameter_counts(model)
    model_config = getattr(model, "config", None)  # a PeftModel forwards to its base's config
    shape = model_shape(model_config.to_dict() if model_config is not None else {})
    return flops_per_token(shape, total, trainable, ctx.hp.max_length, lookup=lookup_weights(model))


def record_resolved_config(ctx: JobContext, model: nn.Module, **extra: Any) -> None:
    """Store what will actually run: resolved hyperparameters, data hash, versions, parameter counts."""
    trainable, total = parameter_counts(model)
    config = {
        **ctx.summary(),
        "parameters": {"trainable": trainable, "total": total},
        "flops_per_token": model_flops_per_token(ctx, model),
        "libraries": {
            name: version(name) for name in ("torch", "transformers", "peft", "trl", "accelerate", "tokenizers")
        },
        "device": device_description(),
        "world_size": world_size(),
        "precision": "bf16" if use_bf16() else "fp32",
        **extra,
    }
    update_job(ctx.job_id, resolved_config=config)


def release_memory() -> None:
    """Give back what the finished job held, so the next job in this worker process starts clean."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def final_losses(trainer: Trainer) -> tuple[float | None, float | None]:
    """The last logged train loss and eval loss of the run."""
    history = trainer.state.log_history
    loss = next((e["loss"] for e in reversed(history) if "loss" in e), None)
    eval_loss = next((e["eval_loss"] for e in reversed(history) if "eval_loss" in e), None)
    return loss, eval_loss
