"""Fine-tune a base model (a local Hugging Face directory) with LoRA/QLoRA, its top layers, or all weights.

Read top to bottom: base model and tokenizer from disk → examples for the objective (`sft`: prompt/response
pairs or conversations with loss on the responses only, see `workers.examples`; `causal_lm`: packed blocks of
text) → the method (LoRA/QLoRA wrapping, or freezing the lower layers) → `transformers.Trainer` → adapter.zip
plus merged.zip (LoRA/QLoRA: the adapter, and the adapter folded into the base) or model.zip (full, freeze),
which also becomes a new base model.
"""

from typing import Any

from peft import TaskType
from transformers import AutoModelForCausalLM, PreTrainedTokenizerBase, set_seed

from backend.job.lifecycle import log_event
from backend.job.preflight import DataCheck
from workers.artifacts import export, export_merged, register_base_model
from workers.context import JobContext
from workers.data import pack_blocks, split_holdout, split_text_holdout
from workers.examples import CHATML_TEMPLATE, Example, SFTStats, build_sft_examples, causal_text, load_tokenizer
from workers.methods import apply_method, load_base
from workers.metrics import check_in
from workers.preflight import enforce, packed_check, sft_check
from workers.training import build_trainer, final_losses, record_resolved_config, train

Records = list[dict[str, Any]]


def sft_examples(
    ctx: JobContext, tokenizer: PreTrainedTokenizerBase, records: Records
) -> tuple[list[Example], SFTStats]:
    examples, stats = build_sft_examples(tokenizer, records, ctx.hp.max_length)
    if stats.truncated or stats.dropped:
        log_event(
            ctx.job_id,
            f"{stats.truncated} of {len(records)} records were cut at max_length={ctx.hp.max_length}; "
            f"{stats.dropped} were dropped because the prompt left no room for the response",
            "warning",
        )
    return examples, stats


def sft_split(
    ctx: JobContext, tokenizer: PreTrainedTokenizerBase, records: Records, held_out: Records | None
) -> tuple[list[Example], list[Example], DataCheck]:
    examples, stats = sft_examples(ctx, tokenizer, records)
    if held_out is not None:
        train, held = examples, sft_examples(ctx, tokenizer, held_out)[0]
    else:
        train, held = split_holdout(examples, ctx.hp.validation_fraction, ctx.hp.seed)
    return train, held, sft_check(ctx, stats, held)


def causal_lm_split(
    ctx: JobContext, tokenizer: PreTrainedTokenizerBase, records: Records, held_out: Records | None
) -> tuple[list[Example], list[Example], DataCheck]:
    # Instruction records can be used as plain text too: prompt as the model sees it, then the response.
    texts = [causal_text(tokenizer, r) for r in records]
    if held_out is not None:
        parts = texts, [causal_text(tokenizer, r) for r in held_out]
    else:
        # Split the text before packing, so no eval block has its neighbours in the training set.
        parts = split_text_holdout(texts, ctx.hp.validation_fraction, ctx.hp.seed)
    train, held = (
        pack_blocks(tokenizer(p, add_special_tokens=False)["input_ids"], tokenizer.eos_token_id, ctx.hp.max_length)
        if p
        else []
        for p in parts
    )
    return train, held, packed_check(ctx, len(texts), train, held)


def run(ctx: JobContext) -> None:
    hp = ctx.hp
    assert ctx.base_model_path is not None, "a finetune job has a base model"
    set_seed(hp.seed)

    # --- data: tokenized and checked before the (possibly large) base model is loaded -----------------
    tokenizer = load_tokenizer(ctx.base_model_path)
    records = list(ctx.dataset.records())
    held_out = list(ctx.validation_dataset.records()) if ctx.validation_dataset else None
    build = causal_lm_split if ctx.objective_spec.packed else sft_split
    train_set, eval_set, check = build(ctx, tokenizer, records, held_out)
    enforce(ctx, check)
    if ctx.objective == "sft" and ctx.dataset.shape in ("messages", "preference") and not tokenizer.chat_template:
        # The conversations were laid out with the fallback template: ship it with the tokenizer, so
        # inference formats a chat exactly the way training did.
        tokenizer.chat_template = CHATML_TEMPLATE
    log_event(ctx.job_id, f"{len(records)} records → {len(train_set)} training and {len(eval_set)} eval examples")
    check_in(ctx.job_id)

    # --- base model ------------------------------------------------------------------------------------
    base = load_base(ctx, AutoModelForCausalLM)
    base.config.pad_token_id = tokenizer.pad_token_id
    if base.generation_config is not None:
        base.generation_config.pad_token_id = tokenizer.pad_token_id
    check_in(ctx.job_id)

    # --- method: a low-rank update beside frozen weights, the top layers, or every weight ---------------
    model = apply_method(ctx, base, TaskType.CAUSAL_LM)

    # --- train -----------------------------------------------------------------------------------------
    record_resolved_config(ctx, model, train_examples=len(train_set), eval_examples=len(eval_set))
    trainer, callback = build_trainer(ctx, model, tokenizer, train_set, eval_set)
    train(trainer, callback, ctx.resume_checkpoint)

    # --- outputs ---------------------------------------------------------------------------------------
    loss, eval_loss = final_losses(trainer)
    what = "adapter" if ctx.method_spec.adapter else "model"
    directory = export(ctx, model, tokenizer, what=what, final_loss=loss, final_eval_loss=eval_loss)
    if what == "model":
        register_base_model(ctx, directory)
    else:
        # The same weights as a plain model, for serving stacks that do not load adapters.
        export_merged(ctx, directory, tokenizer, final_loss=loss, final_eval_loss=eval_loss)
