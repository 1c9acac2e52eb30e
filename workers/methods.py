"""How much of a base model a fine-tuning job trains, as its method in backend/method/registry.py says: a PEFT
adapter (LoRA, QLoRA on a 4-bit base, IA³, prompt or prefix tuning, built from the method's settings), the top
layers (`freeze`) or every weight (`full`). Shared by every fine-tuning recipe (sft/causal_lm, dpo, kto,
classification).
"""

import pkgutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import peft
import torch
from peft import PeftConfig, PeftModel, TaskType, get_peft_model, prepare_model_for_kbit_training
from torch import nn
from transformers import PreTrainedModel
from transformers.utils import is_flash_attn_2_available

from backend.job.lifecycle import log_event
from backend.method.registry import Method
from backend.method.settings import FreezeSettings
from workers.context import JobContext
from workers.training import parameter_counts, use_bf16

Tuned = PreTrainedModel | PeftModel


def load_options(ctx: JobContext) -> dict[str, Any]:
    """`from_pretrained` keywords for the job's method: dtype, and the 4-bit quantization of QLoRA."""
    options: dict[str, Any] = {
        "use_safetensors": True,  # never unpickle a checkpoint: .bin weights can run code when loaded
        "local_files_only": True,
        "trust_remote_code": ctx.trust_remote_code,
    }
    if ctx.method_spec.quantized_base:
        if not torch.cuda.is_available():
            # The API refuses qlora when no CUDA worker is registered; a job can still land on a CPU worker.
            raise RuntimeError("qlora needs a CUDA GPU with bitsandbytes; this worker has none (use lora)")
        from transformers import BitsAndBytesConfig  # imported here: it probes for bitsandbytes

        compute = torch.bfloat16 if use_bf16() else torch.float16
        options["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            # NF4 spreads its 16 levels like normally distributed weights; double quantization also
            # compresses the per-block scales (~0.4 bit/parameter saved).
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute,
        )
        options["device_map"] = {"": torch.cuda.current_device()}
    else:
        # Full and freeze keep fp32 master weights (AdamW updates are far below bf16's 3 significant digits);
        # under an adapter the base is frozen, so on a bf16 GPU it is stored in bf16 at half the memory, while
        # PEFT keeps the small adapter weights in fp32.
        options["dtype"] = torch.bfloat16 if ctx.method_spec.adapter and use_bf16() else torch.float32
    if options.get("dtype") == torch.bfloat16 and is_flash_attn_2_available():
        # FlashAttention-2 (half-precision weights only) reads packed batches' restarting position ids as
        # variable-length spans: no padding and no materialized block mask. Elsewhere sdpa builds the mask.
        options["attn_implementation"] = "flash_attention_2"
    return options


def load_base(ctx: JobContext, auto_class: Any, path: Path | None = None, **extra: Any) -> PreTrainedModel:
    """The base model with `auto_class` (AutoModelForCausalLM, ...SequenceClassification) for the job's method."""
    source = path or ctx.base_model_path
    assert source is not None, "a fine-tuning job has a base model"
    return auto_class.from_pretrained(source, **load_options(ctx), **extra)


def transformer_layers(model: nn.Module) -> nn.ModuleList:
    """The stack of transformer blocks: the longest ModuleList (model.layers in Llama, transformer.h in GPT-2)."""
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList)]
    if not lists:
        raise ValueError("this model has no stack of transformer layers to freeze")
    return max(lists, key=len)


def final_norms(model: nn.Module, layers: nn.ModuleList) -> list[nn.Module]:
    """The norm applied after the stack of layers: a sibling of the stack whose name says norm (Llama's
    model.norm, Phi's final_layernorm) or ln_f (GPT-2)."""
    for parent in model.modules():
        if any(child is layers for child in parent.children()):
            return [
                child
                for name, child in parent.named_children()
                if child is not layers and ("norm" in name.lower() or name == "ln_f")
            ]
    return []


def freeze_bottom(model: nn.Module, trainable_layers: int, head_names: tuple[str, ...]) -> int:
    """Freeze everything but the top `trainable_layers` blocks, the final norm and the head; return how many
    blocks train. Lower layers hold general features, upper ones the task-specific ones."""
    layers = transformer_layers(model)
    n = min(trainable_layers, len(layers))
    model.requires_grad_(False)
    for layer in list(layers)[len(layers) - n :]:
        layer.requires_grad_(True)
    # The final norm rescales what the top layers output, and the head turns it into predictions: both train.
    # (A head tied to the input embedding trains that embedding with it: they are one tensor.)
    for norm in final_norms(model, layers):
        norm.requires_grad_(True)
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] in head_names:
            module.requires_grad_(True)
    return n


def check_target_modules(model: nn.Module, targets: list[str], setting: str = "target_modules") -> None:
    """Refuse target names that match no module: PEFT adapts the ones that match and drops the others without a
    word, so a typo would quietly train less than asked."""
    names = [name for name, _ in model.named_modules()]
    missing = [t for t in targets if not any(n == t or n.endswith(f".{t}") for n in names)]
    if missing:
        linear = sorted(
            {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear) and n}
            - {"lm_head", "score", "classifier"}
        )
        raise ValueError(
            f"{setting} {', '.join(missing)} match no module of this model; its linear layers are: {', '.join(linear)}"
        )


def peft_config(method: Method, kwargs: dict[str, Any], task_type: TaskType) -> PeftConfig:
    """The PEFT config class the method names, filled with its settings' keywords."""
    assert method.peft_config is not None, f"method {method.name} is not a PEFT method"
    config_class = getattr(peft, method.peft_config)
    config: PeftConfig = config_class(**kwargs, task_type=task_type)
    return config


def apply_peft(ctx: JobContext, model: PreTrainedModel, task_type: TaskType) -> Tuned:
    """Wrap the frozen base in the method's PEFT adapter (SEQ_CLS also trains, and saves, the new head in full)."""
    method = ctx.method_spec
    if method.quantized_base:
        # Freezes the 4-bit base and upcasts its few non-quantized weights (norms) to fp32 for stable sums;
        # checkpointing is left to the Trainer, like every other method.
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    kwargs = ctx.method_config.peft_kwargs(str(ctx.base_model_path))
    for setting in ("target_modules", "feedforward_modules"):
        if isinstance(kwargs.get(setting), list):
            check_target_modules(model, kwargs[setting], setting)
    return get_peft_model(model, peft_config(method, kwargs, task_type))


def apply_freeze(ctx: JobContext, model: PreTrainedModel, task_type: TaskType) -> Tuned:
    head = ("score", "classifier") if task_type == TaskType.SEQ_CLS else ("lm_head",)
    n = freeze_bottom(model, ctx.method_settings(FreezeSettings).trainable_layers, head)
    log_event(ctx.job_id, f"freeze: training the top {n} of {len(transformer_layers(model))} layers")
    return model


def apply_full(ctx: JobContext, model: PreTrainedModel, task_type: TaskType) -> Tuned:
    return model


def method_function(method: Method) -> Callable[[JobContext, PreTrainedModel, TaskType], Tuned]:
    """The worker function the registry names for `method` ("module:function")."""
    function: Callable[[JobContext, PreTrainedModel, TaskType], Tuned] = pkgutil.resolve_name(method.worker)
    return function


def apply_method(ctx: JobContext, model: PreTrainedModel, task_type: TaskType) -> Tuned:
    """Wrap or freeze `model` for the job's method and log how many parameters will train.

    Gradient checkpointing is not set here: the Trainer turns it on from the job's TrainingArguments
    (`workers.training.training_arguments`), non-reentrant, which needs no input that requires a gradient."""
    tuned = method_function(ctx.method_spec)(ctx, model, task_type)
    trainable, total = parameter_counts(tuned)
    log_event(
        ctx.job_id,
        f"{ctx.method}: training {trainable:,} of {total:,} parameters ({100 * trainable / total:.2f}%)",
    )
    return tuned
