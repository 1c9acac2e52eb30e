"""Fine-tune a base model (a local Hugging Face directory) with LoRA or on all of its weights.

Read top to bottom: base model and tokenizer from disk → examples for the objective (`sft`: prompt/response
pairs with loss on the response only; `causal_lm`: packed blocks of text) → optional LoRA wrapping →
`transformers.Trainer` → adapter.zip (LoRA) or model.zip (full, which also becomes a new base model).
"""

from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, TaskType, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase, set_seed

from backend.dataset.formats import read_records
from backend.job.lifecycle import log_event
from workers.artifacts import export, register_base_model
from workers.context import JobContext
from workers.data import Example, build_sft_examples, format_prompt, pack_blocks, split_holdout, split_text_holdout
from workers.metrics import check_in
from workers.training import (
    build_trainer,
    final_losses,
    parameter_counts,
    record_resolved_config,
    train,
    use_bf16,
)


def load_tokenizer(path: Path) -> PreTrainedTokenizerBase:
    # A missing directory would otherwise be taken for a Hub repo id; base models are only ever local.
    if not path.is_dir():
        raise FileNotFoundError(f"base model directory {path} does not exist (moved or deleted?)")
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=False)
    if tokenizer.eos_token_id is None:
        raise ValueError(f"the tokenizer in {path} has no EOS token; cannot mark where a response ends")
    if tokenizer.pad_token_id is None:
        # Safe because padded positions get label -100 and attention mask 0 from the collator, never
        # "label == pad": the real EOS at the end of each response is still learned.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(path: Path, *, lora: bool) -> PreTrainedModel:
    # Full fine-tuning keeps fp32 master weights (AdamW updates are far below bf16's 3 significant digits);
    # with LoRA the base is frozen, so on a bf16 GPU it is stored in bf16 at half the memory, while PEFT
    # keeps the small adapter matrices in fp32.
    dtype = torch.bfloat16 if lora and use_bf16() else torch.float32
    return AutoModelForCausalLM.from_pretrained(
        path, dtype=dtype, use_safetensors=True, local_files_only=True, trust_remote_code=False
    )


def sft_examples(ctx: JobContext, tokenizer: PreTrainedTokenizerBase, records: list[dict[str, str]]) -> list[Example]:
    if any("prompt" not in r for r in records):
        raise ValueError("objective sft needs prompt/completion records (e.g. an alpaca dataset)")
    examples, stats = build_sft_examples(tokenizer, records, ctx.hp.max_length)
    if stats.truncated or stats.dropped:
        log_event(
            ctx.job_id,
            f"{stats.truncated} of {len(records)} records were cut at max_length={ctx.hp.max_length}; "
            f"{stats.dropped} were dropped because the prompt left no room for the response",
            "warning",
        )
    return examples


def causal_lm_examples(
    ctx: JobContext, tokenizer: PreTrainedTokenizerBase, records: list[dict[str, str]]
) -> tuple[list[Example], list[Example]]:
    # Instruction records can be used as plain text too: prompt as the model sees it, then the response.
    texts = [r["text"] if "text" in r else format_prompt(tokenizer, r["prompt"]) + r["completion"] for r in records]
    # Split the text before packing, so no eval block has its neighbours in the training set.
    parts = split_text_holdout(texts, ctx.hp.validation_fraction, ctx.hp.seed)
    train, held = (
        pack_blocks(tokenizer(p, add_special_tokens=False)["input_ids"], tokenizer.eos_token_id, ctx.hp.max_length)
        if p
        else []
        for p in parts
    )
    return train, held


def sft_split(
    ctx: JobContext, tokenizer: PreTrainedTokenizerBase, records: list[dict[str, str]]
) -> tuple[list[Example], list[Example]]:
    return split_holdout(sft_examples(ctx, tokenizer, records), ctx.hp.validation_fraction, ctx.hp.seed)


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
    records = list(read_records(ctx.dataset_path, ctx.dataset_filename))
    build = sft_split if ctx.objective == "sft" else causal_lm_examples
    train_set, eval_set = build(ctx, tokenizer, records)
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
    train(trainer, callback)

    # --- outputs ---------------------------------------------------------------------------------------
    loss, eval_loss = final_losses(trainer)
    what = "adapter" if ctx.method == "lora" else "model"
    directory = export(ctx, model, tokenizer, what=what, final_loss=loss, final_eval_loss=eval_loss)
    if what == "model":
        register_base_model(ctx, directory)
