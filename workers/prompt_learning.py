"""Generation from a prompt or prefix tuning adapter, made to see what the adapter learned.

transformers 5 renamed the key/value cache that generation hands the model from `past_key_values` to `cache`;
PEFT's generation step for prompt learning (peft 0.21 `PeftModelForCausalLM.prepare_inputs_for_generation`)
still reads and writes `past_key_values`. So it never finds the cache: prefix tuning puts its learned prefixes
under the old name, which the model ignores (the answer is the bare base's), and prompt tuning, taking every step
for the first, prepends its soft prompt again at each new token (the answer drifts from what the trained model
would say). Training is unaffected: its forward pass passes the prefixes itself.

`fix_generation` renames the cache around PEFT's step on one model object: to `past_key_values` before PEFT's
logic, back to `cache` after it. Greedy answers then equal the trained model's own next-token predictions
(tests/workers/test_peft_methods.py compares them with forward passes, so a PEFT release that reads `cache` and
no longer needs this shows up there).
"""

from typing import Any

from peft import PeftModel
from torch import nn

OLD, NEW = "past_key_values", "cache"
FIXED = "_studio_generation_fixed"


def fix_generation(model: nn.Module) -> None:
    """Make `model.generate` (a prompt or prefix tuning PeftModel) use its adapter; anything else is left as is.
    Idempotent: the watch prompts call it at every evaluation."""
    if not isinstance(model, PeftModel) or not model.active_peft_config.is_prompt_learning:
        return
    attributes = vars(model)  # the instance's own: PeftModel forwards unknown names to the base model
    if attributes.get(FIXED):
        return
    base_step = model.base_model_prepare_inputs_for_generation
    peft_step = model.prepare_inputs_for_generation

    def base_inputs(*args: Any, **kwargs: Any) -> dict[str, Any]:
        inputs: dict[str, Any] = base_step(*args, **kwargs)
        if NEW in inputs and OLD not in inputs:
            inputs[OLD] = inputs.pop(NEW)
        return inputs

    def peft_inputs(*args: Any, **kwargs: Any) -> dict[str, Any]:
        inputs: dict[str, Any] = peft_step(*args, **kwargs)
        if OLD in inputs:
            inputs[NEW] = inputs.pop(OLD)
        return inputs

    # Instance attributes shadow the methods: PEFT's generate() installs model.prepare_inputs_for_generation on
    # the base model, and its step calls model.base_model_prepare_inputs_for_generation.
    attributes.update(
        base_model_prepare_inputs_for_generation=base_inputs, prepare_inputs_for_generation=peft_inputs, **{FIXED: True}
    )
