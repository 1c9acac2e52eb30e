"""Direct Preference Optimization: teach a base model to prefer the chosen answer of each pair over the rejected one.

Read top to bottom: base model and tokenizer from disk → each preference record rendered twice, prompt + chosen and
prompt + rejected, exactly as SFT renders a conversation (`workers.examples`: the base's chat template, or ChatML
closed by EOS) → the method (LoRA/QLoRA, freeze, full) → trl's `DPOTrainer` behind our callback → adapter.zip
(LoRA) or model.zip (full/freeze, which also becomes a new base model).

The loss, per pair, with policy π and frozen reference π_ref (the base before training):

    loss = -log sigmoid(β · [(log π(chosen) - log π_ref(chosen)) - (log π(rejected) - log π_ref(rejected))])

Both log-ratios start at 0, so the loss starts at ln 2 ≈ 0.693 and falls as the margin grows; β (`dpo_beta`)
sets how far the policy may drift from the reference for a given margin. trl logs β·log-ratio as
`rewards/chosen` and `rewards/rejected`, their difference as `rewards/margins`, and the share of pairs with a
positive margin as `rewards/accuracies` (all also as `eval_` at each evaluation).
"""

from dataclasses import fields
from typing import Any

from datasets import Dataset
from peft import PeftModel, TaskType
from transformers import AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerBase, TrainingArguments, set_seed
from trl import DPOConfig, DPOTrainer
from trl.trainer.dpo_trainer import DataCollatorForPreference

from backend.job.lifecycle import log_event
from backend.job.preflight import DataCheck, keep_curve
from backend.method.settings import DpoSettings
from workers.artifacts import export, export_merged, register_base_model
from workers.context import JobContext
from workers.data import split_holdout
from workers.examples import CHATML_TEMPLATE, Example, Rendered, load_tokenizer, render_record
from workers.methods import apply_method, load_base
from workers.metrics import check_in
from workers.preflight import enforce, evaluation_asked
from workers.training import build_trainer, final_losses, record_resolved_config, train, training_arguments

Records = list[dict[str, Any]]
# What the model card and the job's summary report of the last evaluation.
REWARD_KEYS = ("eval_rewards/accuracies", "eval_rewards/margins")


# --- data: one example per pair, {"prompt_ids", "chosen_ids", "rejected_ids"} ---------------------------------


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def answer_end(rendered: Rendered) -> int:
    """Where the answer's trained tokens end: a template's whitespace after the final EOS is not part of it."""
    return max((i + 1 for i, trained in enumerate(rendered.trained) if trained), default=len(rendered.ids))


def pair_example(
    tokenizer: PreTrainedTokenizerBase, record: dict[str, Any], max_length: int
) -> tuple[Example | None, bool, int]:
    """(token ids of the shared prompt and of each answer, cut at `max_length`, or None when the prompt alone
    fills it; whether anything was cut; the shortest max_length that keeps the pair).

    Each side is rendered as the SFT recipe renders a preference record (prompt, then that answer, its
    end-of-turn marker and EOS), so DPO after SFT sees the layout SFT trained on. The prompt is the part both
    renders share, up to the final answer's turn header: tokens the two answers happen to start with stay in
    the answers, so the logged rewards describe whole answers (in the loss they cancel out anyway).
    """
    chosen = render_record(tokenizer, record, "sft")
    rejected = render_record(tokenizer, {**record, "chosen": record["rejected"]}, "sft")
    n = common_prefix(chosen.ids, rejected.ids)
    while n > 0 and chosen.trained[n - 1]:  # back out of the answers' shared start, to the untrained header
        n -= 1
    ends = answer_end(chosen), answer_end(rejected)
    truncated = max(ends) > max_length
    if n >= max_length:
        return None, truncated, n + 1  # no answer token would survive the cut: nothing to compare
    # prompt + answer within max_length, as the collator would cut them anyway.
    chosen_ids, rejected_ids = (r.ids[n : min(max_length, e)] for r, e in zip((chosen, rejected), ends, strict=True))
    return {"prompt_ids": chosen.ids[:n], "chosen_ids": chosen_ids, "rejected_ids": rejected_ids}, truncated, n + 1


def pair_examples(
    ctx: JobContext, tokenizer: PreTrainedTokenizerBase, records: Records
) -> tuple[list[Example], list[int | None]]:
    """The pairs that fit in max_length, and per record the shortest max_length that would keep it."""
    max_length = ctx.hp.max_length
    examples: list[Example] = []
    fits: list[int | None] = []
    truncated = 0
    for number, record in enumerate(records, start=1):
        try:
            example, cut, fit = pair_example(tokenizer, record, max_length)
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
            f"{truncated} of {len(records)} pairs were cut at max_length={max_length}; "
            f"{dropped} were dropped because the prompt left no room for the answers",
            "warning",
        )
    return examples, fits


def pair_split(
    ctx: JobContext, tokenizer: PreTrainedTokenizerBase, records: Records, held_out: Records | None
) -> tuple[list[Example], list[Example], DataCheck]:
    """Training and eval pairs, and the pre-flight check of what tokenizing left."""
    examples, fits = pair_examples(ctx, tokenizer, records)
    if held_out is not None:
        train, held = examples, pair_examples(ctx, tokenizer, held_out)[0]
    else:
        train, held = split_holdout(examples, ctx.hp.validation_fraction, ctx.hp.seed)
    asked, source = evaluation_asked(ctx)
    check = DataCheck(
        unit="pairs",
        total=len(records),
        kept=len(examples),
        max_length=ctx.hp.max_length,
        keep_at=keep_curve(fits, ctx.hp.max_length),
        supervised_tokens=sum(len(e["chosen_ids"]) + len(e["rejected_ids"]) for e in examples),
        identical_pairs=sum(e["chosen_ids"] == e["rejected_ids"] for e in examples),
        validation=len(held) if asked else None,
        validation_source=source,
    )
    return train, held, check


# --- trainer ------------------------------------------------------------------------------------------------------


class PreferenceTrainer(DPOTrainer):
    """trl's DPOTrainer on pairs this recipe tokenized itself (trl would re-render them its own way)."""

    def __init__(self, *, train_dataset: list[Example], eval_dataset: list[Example] | None, **kwargs: Any) -> None:
        # trl accepts only `datasets.Dataset`; the pairs are small lists of ids, held in memory.
        evaluation = Dataset.from_list(eval_dataset) if eval_dataset else None
        super().__init__(train_dataset=Dataset.from_list(train_dataset), eval_dataset=evaluation, **kwargs)

    def _prepare_dataset(self, dataset: Dataset, *args: Any, **kwargs: Any) -> Dataset:
        return dataset  # already prompt_ids / chosen_ids / rejected_ids, cut at max_length


def dpo_config(ctx: JobContext, *, n_train: int, n_eval: int) -> DPOConfig:
    """The job's TrainingArguments (checkpoints, logging, eval, seed, precision) plus DPO's own settings."""
    base = training_arguments(ctx, n_train=n_train, n_eval=n_eval, sampled=False)
    # Every TrainingArguments field is copied, which also overrides trl's own defaults for them (trl turns on
    # gradient checkpointing and bf16 by default; the job's settings decide here).
    same = {f.name: getattr(base, f.name) for f in fields(TrainingArguments) if f.init}
    return DPOConfig(
        **same,
        beta=ctx.objective_settings(DpoSettings).beta,
        max_length=ctx.hp.max_length,
        # Dropout off (LoRA's too): with it, the policy's log-probs would be noisy against the dropout-free
        # reference, and the log-ratios would not start at 0.
        disable_dropout=True,
    )


def reference_model(ctx: JobContext, model: PreTrainedModel | PeftModel) -> PreTrainedModel | None:
    """A frozen copy of the base when all or part of it trains; None with an adapter, whose reference is the
    same model with the adapter disabled (no second copy in memory)."""
    if isinstance(model, PeftModel):
        return None
    reference = load_base(ctx, AutoModelForCausalLM)
    reference.requires_grad_(False)
    return reference.eval()


def last_logged(history: list[dict[str, Any]], key: str) -> float | None:
    return next((e[key] for e in reversed(history) if key in e), None)


# --- the recipe ---------------------------------------------------------------------------------------------------


def run(ctx: JobContext) -> None:
    hp = ctx.hp
    assert ctx.base_model_path is not None, "a dpo job has a base model"
    set_seed(hp.seed)

    # --- data: pairs laid out as conversations, checked before the base model is loaded -----------------
    tokenizer = load_tokenizer(ctx.base_model_path)
    records = list(ctx.dataset.records())
    held_out = list(ctx.validation_dataset.records()) if ctx.validation_dataset else None
    train_set, eval_set, check = pair_split(ctx, tokenizer, records, held_out)
    enforce(ctx, check)
    if not tokenizer.chat_template:
        # The pairs were laid out with the fallback template: ship it with the tokenizer, so inference (and
        # the watch prompts) format a chat exactly the way training did.
        tokenizer.chat_template = CHATML_TEMPLATE
    log_event(ctx.job_id, f"{len(records)} pairs → {len(train_set)} training and {len(eval_set)} eval examples")
    check_in(ctx.job_id)

    # --- base model ------------------------------------------------------------------------------------
    base = load_base(ctx, AutoModelForCausalLM)
    base.config.pad_token_id = tokenizer.pad_token_id
    if base.generation_config is not None:
        base.generation_config.pad_token_id = tokenizer.pad_token_id
    check_in(ctx.job_id)

    # --- method and reference --------------------------------------------------------------------------
    model = apply_method(ctx, base, TaskType.CAUSAL_LM)
    reference = reference_model(ctx, model)
    log_event(
        ctx.job_id,
        f"dpo: beta={ctx.objective_settings(DpoSettings).beta}, reference = "
        + ("the base (adapter disabled)" if reference is None else "a frozen copy of the base"),
    )

    # --- train -----------------------------------------------------------------------------------------
    record_resolved_config(ctx, model, train_examples=len(train_set), eval_examples=len(eval_set))
    pad_id = tokenizer.pad_token_id
    assert pad_id is not None
    trainer, callback = build_trainer(
        ctx,
        model,
        tokenizer,
        train_set,
        eval_set,
        trainer_class=PreferenceTrainer,
        args=dpo_config(ctx, n_train=len(train_set), n_eval=len(eval_set)),
        # Chosen and rejected sequences of a batch go through the model together: [chosen..., rejected...].
        data_collator=DataCollatorForPreference(pad_token_id=pad_id, max_length=hp.max_length),
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
        "details": {"dpo_reference": "base with the adapter disabled" if reference is None else "frozen base"},
        "metrics": metrics,
    }
    directory = export(ctx, model, tokenizer, what=what, **card)
    if what == "model":
        register_base_model(ctx, directory)
    else:
        # The same weights as a plain model, for serving stacks that do not load adapters.
        export_merged(ctx, directory, tokenizer, **card)
