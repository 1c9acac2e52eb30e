"""Watch prompts: a few prompts the user chose at launch, answered greedily at every eval."""

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from workers.examples import format_prompt
from workers.prompt_learning import fix_generation

# Enough to see an answer take shape; generation runs at every eval, so it must stay cheap.
MAX_NEW_TOKENS = 64


@torch.no_grad()
def answer(model: nn.Module, tokenizer: PreTrainedTokenizerBase, prompt: str, *, sft: bool) -> str:
    """The model's greedy continuation of `prompt`, formatted the way SFT examples were when `sft`."""
    # SFT trained on prompts laid out by the chat template (or Alpaca): ask in the same layout, whose template
    # already carries any BOS; raw text goes in as pretraining saw it.
    text = format_prompt(tokenizer, prompt) if sft else prompt
    inputs = tokenizer(text, return_tensors="pt", add_special_tokens=not sft).to(next(model.parameters()).device)
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
    new_tokens = out[0, inputs["input_ids"].shape[1] :]
    decoded = tokenizer.decode(new_tokens, skip_special_tokens=True)
    assert isinstance(decoded, str)
    return decoded
