"""Kahneman-Tversky Optimization: teach a base model from answers marked desirable or undesirable, one at a time.

Where DPO needs two answers to the same prompt, KTO takes unpaired ones: {prompt, completion, label}, the label
true for an answer to encourage and false for one to discourage (the `unpaired_preference` shape).

Read top to bottom: base model and tokenizer from disk → each record rendered as SFT renders a conversation
(`workers.examples`: the base's chat template, or ChatML closed by EOS), split into the prompt and the final answer
→ the method (LoRA/QLoRA, freeze, full) → trl's `KTOTrainer` behind our callback → adapter.zip (LoRA) or model.zip
(full/freeze, which also becomes a new base model).

The loss, per answer y to prompt x, with policy π, frozen reference π_ref (the base before training) and
r = log π(y|x) - log π_ref(y|x):

    desirable:    λ_D · (1 - sigmoid(β · (r - z)))
    undesirable:  λ_U · (1 - sigmoid(β · (z - r)))

z estimates KL(π ‖ π_ref) from mismatched pairs: each prompt of a batch with the answer of its neighbour in the
same batch (so a batch needs at least 2 records), averaged over the batch and clamped at 0; no gradient flows
through it. It is the reference point of prospect theory: a desirable answer is rewarded only for rising above
what the policy's drift raises everything by. At step 1 the policy is the reference, r = z = 0, and every
answer's loss is 1 - sigmoid(0) = 0.5. β (`kto_beta`) sets how far the policy may drift for a given gain; λ_D
and λ_U (`kto_desirable_weight`, `kto_undesirable_weight`) balance the two kinds when one is much rarer (the
paper keeps λ_D·n_D / (λ_U·n_U) within [1, 4/3]).

trl logs β·r averaged over each kind as `rewards/chosen` (desirable) and `rewards/rejected` (undesirable), their
difference as `rewards/margins` when a batch holds both, the answers' summed log-probabilities as `logps/chosen`
and `logps/rejected`, and z as `kl` (all also as `eval_` at each evaluation).
"""

from dataclasses import fields
from typing import Any

from datasets import Dataset
from peft import PeftModel, TaskType
from transformers import AutoModelForCausalLM, PreTrainedTokenizerBase, TrainingArguments, set_seed

# KTO left trl.experimental in trl 1.x: the stable import, which carries neither the experimental notice nor the
# deprecation warning of the old path.
from trl import KTOConfig, KTOTrainer
from trl.trainer.kto_trainer import DataCollatorForUnpairedPreference

from backend.job.lifecycle import log_event
from backend.job.preflight import DataCheck, keep_curve, untrainable
from backend.method.settings import KtoSettings
from workers.artifacts import export, export_merged, register_base_model
from workers.context import JobContext
from workers.data import split_holdout
from workers.examples import CHATML_TEMPLATE, Rendered, load_tokenizer, render_record
from workers.methods import apply_method, load_base
from workers.metrics import check_in
from workers.preflight import enforce, evaluation_asked
from workers.recipes.dpo import last_logged, reference_model
from workers.training import build_trainer, final_losses, record_resolved_config, train, training_arguments

Records = list[dict[str, Any]]
# An example: {"prompt_ids", "completion_ids", "label"}, and "KL_completion_ids" once batched.
KTOExample = dict[str, Any]
# What the model card and the job's summary report of the last evaluation.
REWARD_KEYS = ("eval_rewards/chosen", "eval_rewards/rejected", "eval_kl")


# --- data: one example per record, {"prompt_ids", "completion_ids", "label"} ------------------------------------


def final_answer(rendered: Rendered) -> tuple[int, int] | None:
    """(start, end) of the final answer's trained tokens: the last run of them, with its end-of-turn marker and
    EOS. Earlier assistant turns belong to the prompt: KTO rates only the answer its label is about."""
    end = max((i + 1 for i, trained in enumerate(rendered.trained) if trained), default=0)
    if end == 0:
        return None  # the answer carries no loss (weight 0): nothing to rate
    start = end
    while start > 0 and rendered.trained[start - 1]:
        start -= 1
    return start, end


def unpaired_example(
    tokenizer: PreTrainedTokenizerBase, record: dict[str, Any], max_length: int
) -> tuple[KTOExample | None, bool, int | None]:
    """(the prompt's and the answer's token ids, cut at `max_length`, or None when no answer token survives the
    cut; whether anything was cut; the shortest max_length that keeps the record, None when none does).

    The record is rendered as the SFT recipe renders it (prompt, then the answer, its end-of-turn marker and
    EOS), so KTO after SFT sees the layout SFT trained on; the answer's turn header stays in the prompt."""
    rendered = render_record(tokenizer, record, "sft")
    span = final_answer(rendered)
    if span is None:
        return None, False, None
    start, end = span
    truncated = end > max_length
    if start >= max_length:
        return None, truncated, start + 1
    example = {
        "prompt_ids": rendered.ids[:start],
        "completion_ids": rendered.ids[start : min(max_length, end)],
        "label": bool(record["label"]),
    }
    return example, truncated, start + 1


def unpaired_examples(
    ctx: JobContext, tokenizer: PreTrainedTokenizerBase, records: Records
) -> tuple[list[KTOExample], list[int | None]]:
    """The records that fit in max_length, and per record the shortest max_length that would keep it."""
    max_length = ctx.hp.max_length
    examples: list[KTOExample] = []
    fits: list[int | None] = []
    truncated = 0
    for number, record in enumerate(records, start=1):
        try:
            example, cut, fit = unpaired_example(tokenizer, record, max_length)
        except Exception as exc:
            raise ValueError(f"record {number}: {exc}") from exc
        truncated += cut
        fits.append(fit)
        if example is not None:
            examples.append(example)
    dropped = len(records) - len(examples)
    if truncated or dropped:
        log_event(
            ctx.job_id,
            f"{truncated} of {len(records)} answers were cut at max_length={max_length}; "
            f"{dropped} were dropped (the prompt left no room for the answer, or the answer has weight 0)",
            "warning",
        )
    return examples, fits


def unpaired_split(
    ctx: JobContext, tokenizer: PreTrainedTokenizerBase, records: Records, held_out: Records | None
) -> tuple[list[KTOExample], list[KTOExample], DataCheck]:
    """Training and eval examples, and the pre-flight check of what tokenizing left."""
    examples, fits = unpaired_examples(ctx, tokenizer, records)
    if held_out is not None:
        train_set, eval_set = examples, unpaired_examples(ctx, tokenizer, held_out)[0]
    else:
        # Shuffled even with no hold-out: KTO reads the examples in order (see with_kl_completions), and a file
        # sorted by label would give batches of one kind only.
        train_set, eval_set = split_holdout(examples, ctx.hp.validation_fraction, ctx.hp.seed)
    asked, source = evaluation_asked(ctx)
    check = DataCheck(
        unit="records",
        total=len(records),
        kept=len(examples),
        max_length=ctx.hp.max_length,
        keep_at=keep_curve(fits, ctx.hp.max_length),
        untrainable=untrainable(fits),
        supervised_tokens=sum(len(e["completion_ids"]) for e in examples),
        validation=len(eval_set) if asked else None,
        validation_source=source,
    )
    return train_set, eval_set, check


def with_kl_completions(examples: list[KTOExample], batch_size: int) -> list[KTOExample]:
    """Each example with the answer of its predecessor in the same batch (the first takes the batch's last) as
    `KL_completion_ids`: the mismatched pairs z is estimated from, built as trl builds them. The sampler keeps this
    order (`train_sampling_strategy="sequential"`), so the batches here are the batches trained on."""
    out = []
    for at in range(0, len(examples), batch_size):
        batch = examples[at : at + batch_size]
        rotated = [batch[-1], *batch[:-1]]
        out += [{**e, "KL_completion_ids": r["completion_ids"]} for e, r in zip(batch, rotated, strict=True)]
    return out


def label_counts(examples: list[KTOExample]) -> tuple[int, int]:
    desirable = sum(e["label"] for e in examples)
    return desirable, len(examples) - desirable


def counts_text(desirable: int, undesirable: int) -> str:
    return f"{desirable} desirable, {undesirable} undesirable"


# --- trainer ------------------------------------------------------------------------------------------------------


class UnpairedTrainer(KTOTrainer):
    """trl's KTOTrainer on examples this recipe tokenized itself (trl would re-render them its own way)."""

    def __init__(
        self, *, train_dataset: list[KTOExample], eval_dataset: list[KTOExample] | None, **kwargs: Any
    ) -> None:
        # trl accepts only `datasets.Dataset`; the examples are small lists of ids, held in memory.
        evaluation = Dataset.from_list(eval_dataset) if eval_dataset else None
        super().__init__(train_dataset=Dataset.from_list(train_dataset), eval_dataset=evaluation, **kwargs)

    def _prepare_dataset(self, dataset: Dataset, *args: Any, **kwargs: Any) -> Dataset:
        return dataset  # already prompt_ids / completion_ids / KL_completion_ids / label, cut at max_length


def kto_config(ctx: JobContext, *, n_train: int, n_eval: int) -> KTOConfig:
    """The job's TrainingArguments (checkpoints, logging, eval, seed, precision) plus KTO's own settings."""
    settings = ctx.objective_settings(KtoSettings)
    base = training_arguments(ctx, n_train=n_train, n_eval=n_eval, sampled=False)
    # Every TrainingArguments field is copied, which also overrides trl's own defaults for them (trl turns on
    # gradient checkpointing and bf16 and sets a learning rate of 1e-6 by default; the job's settings decide).
    same = {f.name: getattr(base, f.name) for f in fields(TrainingArguments) if f.init}
    return KTOConfig(
        **{
            **same,
            # The KL pairs were built over consecutive examples: a shuffling sampler would break them apart
            # (trl refuses anything else). The examples were shuffled once, with the job's seed, before.
            "train_sampling_strategy": "sequential",
        },
        loss_type="kto",
        beta=settings.beta,
        desirable_weight=settings.desirable_weight,
        undesirable_weight=settings.undesirable_weight,
        max_length=ctx.hp.max_length,
        # Dropout off (LoRA's too): with it, the policy's log-probs would be noisy against the dropout-free
        # reference, and the log-ratios would not start at 0.
        disable_dropout=True,
    )


def weight_advice(desirable: int, undesirable: int, ctx: JobContext) -> str:
    """The KTO paper's range for the weights, when the current ones are outside it (Eq. 8: λ_D·n_D/(λ_U·n_U)
    within [1, 4/3]); '' when they are within it or one kind is missing."""
    if not desirable or not undesirable:
        return ""
    settings = ctx.objective_settings(KtoSettings)
    ratio = settings.desirable_weight * desirable / (settings.undesirable_weight * undesirable)
    if 1.0 <= ratio <= 4 / 3:
        return ""
    low = undesirable * settings.undesirable_weight / desirable
    return (
        f"; the KTO paper suggests desirable_weight in [{low:.2f}, {low * 4 / 3:.2f}] for these counts "
        f"(now {settings.desirable_weight})"
    )


# --- the recipe ---------------------------------------------------------------------------------------------------


def run(ctx: JobContext) -> None:
    hp = ctx.hp
    assert ctx.base_model_path is not None, "a kto job has a base model"
    set_seed(hp.seed)

    # --- data: answers laid out as conversations, checked before the base model is loaded ----------------
    tokenizer = load_tokenizer(ctx.base_model_path)
    records = list(ctx.dataset.records())
    held_out = list(ctx.validation_dataset.records()) if ctx.validation_dataset else None
    train_set, eval_set, check = unpaired_split(ctx, tokenizer, records, held_out)
    enforce(ctx, check)
    args = kto_config(ctx, n_train=len(train_set), n_eval=len(eval_set))
    if args.per_device_train_batch_size < 2:  # the job form refuses it; data parallel can still split it to 1
        raise ValueError(
            f"objective kto needs at least 2 records per batch on each process, got {args.per_device_train_batch_size}"
            " (raise batch_size)"
        )
    train_set = with_kl_completions(train_set, args.per_device_train_batch_size)
    eval_set = with_kl_completions(eval_set, args.per_device_train_batch_size)
    if not tokenizer.chat_template:
        # The answers were laid out with the fallback template: ship it with the tokenizer, so inference (and
        # the watch prompts) format a chat exactly the way training did.
        tokenizer.chat_template = CHATML_TEMPLATE
    desirable, undesirable = label_counts(train_set)
    log_event(
        ctx.job_id,
        f"{len(records)} records → {len(train_set)} training ({counts_text(desirable, undesirable)}) and "
        f"{len(eval_set)} eval examples" + weight_advice(desirable, undesirable, ctx),
    )
    check_in(ctx.job_id)

    # --- base model ------------------------------------------------------------------------------------
    base = load_base(ctx, AutoModelForCausalLM)
    base.config.pad_token_id = tokenizer.pad_token_id
    if base.generation_config is not None:
        base.generation_config.pad_token_id = tokenizer.pad_token_id
    check_in(ctx.job_id)

    # --- method and reference --------------------------------------------------------------------------
    settings = ctx.objective_settings(KtoSettings)
    model = apply_method(ctx, base, TaskType.CAUSAL_LM)
    reference = reference_model(ctx, model)
    log_event(
        ctx.job_id,
        f"kto: beta={settings.beta}, desirable_weight={settings.desirable_weight}, "
        f"undesirable_weight={settings.undesirable_weight}, reference = "
        + ("the base (adapter disabled)" if reference is None else "a frozen copy of the base"),
    )

    # --- train -----------------------------------------------------------------------------------------
    record_resolved_config(
        ctx,
        model,
        train_examples=len(train_set),
        eval_examples=len(eval_set),
        desirable=desirable,
        undesirable=undesirable,
    )
    pad_id = tokenizer.pad_token_id
    assert pad_id is not None
    trainer, callback = build_trainer(
        ctx,
        model,
        tokenizer,
        train_set,
        eval_set,
        trainer_class=UnpairedTrainer,
        args=args,
        # Each batch: the answers (with gradient) and the mismatched KL sequences (without), padded apart.
        data_collator=DataCollatorForUnpairedPreference(pad_token_id=pad_id, max_length=hp.max_length),
        ref_model=reference,
    )
    if isinstance(trainer.model, PeftModel) and "ref" in trainer.model.peft_config:
        # trl copies a given adapter into a frozen "ref" adapter to serve as the reference. Ours is fresh (B = 0),
        # so that copy equals the base: drop it, and trl disables the adapter instead (half the adapter memory,
        # and adapter.zip and the checkpoints hold the one adapter that trained).
        trainer.model.delete_adapter("ref")
    train(trainer, callback, ctx.resume_checkpoint)

    # --- outputs ---------------------------------------------------------------------------------------
    loss, eval_loss = final_losses(trainer)
    metrics = {key: value for key in REWARD_KEYS if (value := last_logged(trainer.state.log_history, key)) is not None}
    what = "adapter" if ctx.method_spec.adapter else "model"
    card: dict[str, Any] = {
        "final_loss": loss,
        "final_eval_loss": eval_loss,
        "details": {
            "kto_reference": "base with the adapter disabled" if reference is None else "frozen base",
            "kto_training_answers": counts_text(desirable, undesirable),
        },
        "metrics": metrics,
    }
    directory = export(ctx, model, tokenizer, what=what, **card)
    if what == "model":
        register_base_model(ctx, directory)
    else:
        # The same weights as a plain model, for serving stacks that do not load adapters.
        export_merged(ctx, directory, tokenizer, **card)
