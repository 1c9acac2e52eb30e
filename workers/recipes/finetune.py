"""Fine-tune a base model (a local Hugging Face directory) with LoRA or on all of its weights.

Read top to bottom: base model and tokenizer from disk → examples for the objective (`sft`: prompt/response
pairs or conversations with loss on the responses only, see `workers.examples`; `causal_lm`: packed blocks of
text) → optional LoRA wrapping → `transformers.Trainer` → adapter.zip (LoRA) or model.zip (full, which also
becomes a new base model).
"""

from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, PeftModel, TaskType, get_peft_model
from transformers import AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerBase, set_seed

from backend.job.lifecycle import log_event
from workers.artifacts import export, register_base_model
from workers.context import JobContext
from workers.data import pack_blocks, split_holdout, split_text_holdout
from workers.examples import CHATML_TEMPLATE, Example, build_sft_examples, causal_text, load_tokenizer
from workers.metrics import check_in
from workers.training import (
    build_trainer,
    final_losses,
    parameter_counts,
    record_resolved_config,
    train,
    use_bf16,
)

Records = list[dict[str, Any]]


def load_model(path: Path, *, lora: bool) -> PreTrainedModel:
    # Full fine-tuning keeps fp32 master weights (AdamW updates are far below bf16's 3 significant digits);
    # with LoRA the base is frozen, so on a bf16 GPU it is stored in bf16 at half the memory, while PEFT
    # keeps the small adapter matrices in fp32.
    dtype = torch.bfloat16 if lora and use_bf16() else torch.float32
    return AutoModelForCausalLM.from_pretrained(
        path, dtype=dtype, use_safetensors=True, local_files_only=True, trust_remote_code=False
    )


def sft_examples(ctx: JobContext, tokenizer: PreTrainedTokenizerBase, records: Records) -> list[Example]:
    examples, stats = build_sft_examples(tokenizer, records, ctx.hp.max_length)
    if stats.truncated or stats.dropped:
        log_event(
            ctx.job_id,
            f"{stats.truncated} of {len(records)} records were cut at max_length={ctx.hp.max_length}; "
            f"{stats.dropped} were dropped because the prompt left no room for the response",
            "warning",
        )
    return examples


def sft_split(
    ctx: JobContext, tokenizer: PreTrainedTokenizerBase, records: Records, held_out: Records | None
) -> tuple[list[Example], list[Example]]:
    if held_out is not None:
        return sft_examples(ctx, tokenizer, records), sft_examples(ctx, tokenizer, held_out)
    return split_holdout(sft_examples(ctx, tokenizer, records), ctx.hp.validation_fraction, ctx.hp.seed)


def causal_lm_split(
    ctx: JobContext, tokenizer: PreTrainedTokenizerBase, records: Records, held_out: Records | None
) -> tuple[list[Example], list[Example]]:
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
    return train, held


def run(ctx: JobContext) -> None:
    hp = ctx.hp
    assert ctx.base_model_path is not None, "a finetune job has a base model"
    set_seed(hp.seed)

    # --- base model ------------------------------------------------------------------------------------
    tokenizer = load_tokenizer(ctx.base_model_path)
    model: PreTrainedModel | PeftModel = load_model(ctx.base_model_path, lora=ctx.method == "lora")
    model.config.pad_token_id = tokenizer.pad_token_id
    if model.generation_config is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id

    check_in(ctx.job_id)

    # --- data ------------------------------------------------------------------------------------------
    records = list(ctx.dataset.records())
    held_out = list(ctx.validation_dataset.records()) if ctx.validation_dataset else None
    build = sft_split if ctx.objective == "sft" else causal_lm_split
    train_set, eval_set = build(ctx, tokenizer, records, held_out)
    if ctx.objective == "sft" and ctx.dataset.shape in ("messages", "preference") and not tokenizer.chat_template:
        # The conversations were laid out with the fallback template: ship it with the tokenizer, so
        # inference formats a chat exactly the way training did.
        tokenizer.chat_template = CHATML_TEMPLATE
    log_event(ctx.job_id, f"{len(records)} records → {len(train_set)} training and {len(eval_set)} eval examples")
    check_in(ctx.job_id)

    # --- method: a low-rank update beside frozen weights, or every weight ------------------------------
    if ctx.method == "lora":
        lora = LoraConfig(
            r=hp.lora_r,
            # The update B·A is scaled by alpha/r, so trying another r needs less retuning of the learning rate.
            lora_alpha=hp.lora_alpha,
            lora_dropout=hp.lora_dropout,
            target_modules=hp.lora_target_modules or "all-linear",  # all-linear skips the output head
            task_type=TaskType.CAUSAL_LM,
        )
        model = get_peft_model(model, lora)
    trainable, total = parameter_counts(model)
    log_event(
        ctx.job_id,
        f"{ctx.method}: training {trainable:,} of {total:,} parameters ({100 * trainable / total:.2f}%)",
    )

    # --- train -----------------------------------------------------------------------------------------
    record_resolved_config(ctx, model, train_examples=len(train_set), eval_examples=len(eval_set))
    trainer, callback = build_trainer(ctx, model, tokenizer, train_set, eval_set)
    train(trainer, callback, ctx.resume_checkpoint)

    # --- outputs ---------------------------------------------------------------------------------------
    loss, eval_loss = final_losses(trainer)
    what = "adapter" if ctx.method == "lora" else "model"
    directory = export(ctx, model, tokenizer, what=what, final_loss=loss, final_eval_loss=eval_loss)
    if what == "model":
        register_base_model(ctx, directory)
