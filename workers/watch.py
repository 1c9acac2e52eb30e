"""Watch prompts: a few prompts the user chose at launch, answered greedily at every eval."""

import torch
from peft import PeftModel
from torch import nn
from transformers import PreTrainedTokenizerBase

from workers.examples import format_prompt
from workers.prompt_learning import fix_generation

# Enough to see an answer take shape; generation runs at every eval, so it must stay cheap.
MAX_NEW_TOKENS = 64


def answers(model: nn.Module, tokenizer: PreTrainedTokenizerBase, prompts: list[str], *, sft: bool) -> list[str]:
    """Greedy continuations of `prompts` (laid out as SFT examples were when `sft`), generated together in one
    left-padded batch (one pass per new token for all of them, not one per prompt); prompt and prefix tuning
    answer one prompt at a time, as their virtual tokens do not sit well beside padding."""
    if isinstance(model, PeftModel) and model.active_peft_config.is_prompt_learning:
        return [_generate(model, tokenizer, [p], sft=sft)[0] for p in prompts]
    return _generate(model, tokenizer, prompts, sft=sft) if prompts else []


@torch.no_grad()
def _generate(model: nn.Module, tokenizer: PreTrainedTokenizerBase, prompts: list[str], *, sft: bool) -> list[str]:
    # SFT trained on prompts laid out by the chat template (or Alpaca): ask in the same layout, whose template
    # already carries any BOS; raw text goes in as pretraining saw it.
    texts = [format_prompt(tokenizer, p) if sft else p for p in prompts]
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # every answer then starts at the same column
    try:
        inputs = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=not sft)
    finally:
        tokenizer.padding_side = side
    inputs = inputs.to(next(model.parameters()).device)
    fix_generation(model)  # a prompt or prefix tuning adapter must be in the answer's context
    was_training = model.training
    model.eval()  # no dropout: the same weights give the same answer
    try:
        out = model.generate(  # type: ignore[operator]
            **inputs,
            max_new_tokens=MAX_NEW_TOKENS,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )
    finally:
        model.train(was_training)
    new_tokens = out[:, inputs["input_ids"].shape[1] :]
    decoded = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
    return [str(text) for text in decoded]
