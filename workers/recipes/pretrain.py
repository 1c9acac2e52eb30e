"""Pretrain a small Llama-style model from random weights on a text dataset.

Read top to bottom: documents → a byte-level BPE tokenizer trained on them (or another model's tokenizer,
`tokenizer_model`) → packed blocks of max_length tokens → a randomly initialized LlamaForCausalLM → next-token
prediction with `transformers.Trainer` → model.zip, and the model joins the owner's base-model list so it can be
fine-tuned next.
"""

from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase, set_seed

from backend.job.lifecycle import log_event
from backend.model.presets import PRESETS
from workers.artifacts import export, register_base_model
from workers.context import JobContext
from workers.data import borrowed_tokenizer, pack_blocks, split_text_holdout, train_tokenizer
from workers.metrics import check_in
from workers.preflight import enforce, packed_check
from workers.training import build_trainer, final_losses, parameter_counts, record_resolved_config, train


def run(ctx: JobContext) -> None:
    hp = ctx.hp
    if ctx.architecture not in PRESETS:
        raise ValueError(f"unknown architecture preset {ctx.architecture!r}; choose one of {', '.join(PRESETS)}")
    preset = PRESETS[ctx.architecture]
    # One seed makes the run repeatable: weight init here, then shuffling inside the Trainer (same seed).
    set_seed(hp.seed)

    # --- data: a tokenizer of our own, then the corpus as one stream cut into blocks ---------------------
    texts = [r["text"] for r in ctx.dataset.records() if "text" in r]
    if not texts:
        raise ValueError("pretraining needs a text dataset (plain text or records with a 'text' field)")
    if ctx.validation_dataset is not None:
        train_texts = texts
        eval_texts = [r["text"] for r in ctx.validation_dataset.records() if "text" in r]
    else:
        # Hold out eval text before anything learns from it, the tokenizer included.
        train_texts, eval_texts = split_text_holdout(texts, hp.validation_fraction, hp.seed)
    tokenizer: PreTrainedTokenizerBase
    if ctx.resume_checkpoint is not None:
        # A resumed run must cut the corpus into the very same token ids its checkpointed weights learned.
        tokenizer = AutoTokenizer.from_pretrained(ctx.resume_checkpoint, local_files_only=True)
        log_event(ctx.job_id, f"reloaded the tokenizer from {ctx.resume_checkpoint.name}")
    elif ctx.tokenizer_model_path is not None:
        # Another model's vocabulary: token ids shared with that model (distillation, comparing runs, serving
        # stacks built for it) instead of a vocabulary fitted to this corpus.
        tokenizer = borrowed_tokenizer(ctx.tokenizer_model_path)
        log_event(ctx.job_id, f"using the tokenizer in {ctx.tokenizer_model_path} ({len(tokenizer)} tokens)")
    else:
        tokenizer = train_tokenizer(train_texts, vocab_size=preset["vocab_size"])
        log_event(ctx.job_id, f"trained a byte-level BPE tokenizer with {len(tokenizer)} tokens")
    # A small corpus runs out of pairs to merge before reaching the preset's size; the model follows the
    # tokenizer, so no embedding row is wasted on a token that can never occur.
    vocab_size = len(tokenizer)
    check_in(ctx.job_id)

    train_set, eval_set = (
        pack_blocks(tokenizer(part, add_special_tokens=False)["input_ids"], tokenizer.eos_token_id, hp.max_length)
        if part
        else []
        for part in (train_texts, eval_texts)
    )
    n_tokens = sum(len(b["input_ids"]) for b in train_set + eval_set)
    log_event(
        ctx.job_id,
        f"{len(texts)} documents → {n_tokens} tokens → {len(train_set)} training and "
        f"{len(eval_set)} eval blocks of up to {hp.max_length} tokens",
    )
    enforce(ctx, packed_check(ctx, len(texts), train_set, eval_set))

    check_in(ctx.job_id)

    # --- model: the preset's shape, random weights -----------------------------------------------------
    config = LlamaConfig(
        **{
            **preset,
            "vocab_size": vocab_size,
            # Positions beyond max_position_embeddings would be extrapolated RoPE: make room for max_length.
            "max_position_embeddings": max(preset["max_position_embeddings"], hp.max_length),
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        }
    )
    model = LlamaForCausalLM(config)
    tokenizer.model_max_length = config.max_position_embeddings
    _, total = parameter_counts(model)
    log_event(ctx.job_id, f"initialized a {ctx.architecture} Llama model with {total / 1e6:.2f}M parameters")

    # --- train -----------------------------------------------------------------------------------------
    record_resolved_config(
        ctx, model, vocab_size=vocab_size, train_blocks=len(train_set), eval_blocks=len(eval_set), tokens=n_tokens
    )
    trainer, callback = build_trainer(ctx, model, tokenizer, train_set, eval_set)
    train(trainer, callback, ctx.resume_checkpoint)

    # --- outputs: model.zip, and a new base model ------------------------------------------------------
    loss, eval_loss = final_losses(trainer)
    directory = export(
        ctx,
        model,
        tokenizer,
        what="model",
        final_loss=loss,
        final_eval_loss=eval_loss,
        details={"vocab_size": vocab_size, "parameters": total},
    )
    register_base_model(ctx, directory)
