"""Each method's and objective's own settings: a pydantic model per entry, every field with a description and
bounds (they drive the form, the API schema and the docs, as PEFT's and TRL's config classes do).

A method's settings also say how many parameters it trains on a model of a given shape (the estimate shows the
count before a run; tests hold it equal to PEFT's own count) and, for a PEFT method, the keywords of its PEFT
config class (the worker passes them on; no second copy of the mapping lives there)."""

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from backend.method.shape import ModelShape
from backend.schemas import Text

ModuleNames = list[Text] | None


def _module_names(v: list[str] | None) -> list[str] | None:
    if v is not None:
        for name in v:
            if not name or not name.replace("_", "").replace(".", "").isalnum():
                raise ValueError(f"not a module name: {name!r}")
    return v


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class MethodSettings(Settings):
    def trainable_parameters(self, shape: ModelShape, total: int) -> int:
        """Parameters this method trains on a causal LM of `shape` with `total` parameters."""
        return total

    def peft_kwargs(self, base_path: str) -> dict[str, Any]:
        """Keywords of the method's PEFT config class (task_type aside); `base_path` is the base model's folder."""
        raise NotImplementedError(f"{type(self).__name__} is not a PEFT method")

    def extra_positions(self) -> int:
        """Positions the method adds before each sequence (virtual tokens), beyond max_length."""
        return 0


class FullSettings(MethodSettings):
    """Every weight trains: nothing to set."""


class FreezeSettings(MethodSettings):
    trainable_layers: int = Field(
        2, ge=1, le=1000, description="Train only this many top transformer layers (and the final norm and head)."
    )

    def trainable_parameters(self, shape: ModelShape, total: int) -> int:
        head = shape.vocab * shape.hidden + shape.hidden  # lm_head and the final norm train too
        return min(self.trainable_layers, shape.layers) * shape.layer_parameters() + head


class LoraSettings(MethodSettings):
    r: int = Field(8, ge=1, le=1024, description="LoRA rank: size of the low-rank update.")
    lora_alpha: int = Field(16, ge=1, le=4096, description="Scaling numerator: the update is scaled by alpha/r.")
    lora_dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA input.")
    target_modules: ModuleNames = Field(
        None, min_length=1, description="Module names to adapt, e.g. q_proj, v_proj; empty means all linear layers."
    )
    use_rslora: bool = Field(
        False, description="Rank-stabilized LoRA: scale the update by alpha/sqrt(r), which keeps high ranks learning."
    )
    use_dora: bool = Field(
        False, description="DoRA: learn each weight's magnitude apart from its LoRA-updated direction (slower)."
    )

    _names = field_validator("target_modules")(_module_names)

    def trainable_parameters(self, shape: ModelShape, total: int) -> int:
        per_layer = sum(
            self.r * (fin + fout) + (fout if self.use_dora else 0)  # DoRA adds a magnitude per output
            for fin, fout in shape.matching(self.target_modules).values()
        )
        return per_layer * shape.layers

    def peft_kwargs(self, base_path: str) -> dict[str, Any]:
        return {
            "r": self.r,
            # The update B·A is scaled by alpha/r (alpha/sqrt(r) with rsLoRA, which keeps large ranks from
            # learning slower), so trying another r needs less retuning of the learning rate.
            "lora_alpha": self.lora_alpha,
            "lora_dropout": self.lora_dropout,
            "use_rslora": self.use_rslora,
            "use_dora": self.use_dora,
            "target_modules": self.target_modules or "all-linear",  # all-linear skips the output head
        }


# IA³'s default modules in PEFT for Llama-style models: the keys and values (scaled at their outputs) and the MLP's
# down projection (scaled at its input, which is what "feed-forward" means to IA³).
IA3_TARGETS = ["k_proj", "v_proj", "down_proj"]
IA3_FEEDFORWARD = ["down_proj"]


class IA3Settings(MethodSettings):
    target_modules: ModuleNames = Field(
        None,
        min_length=1,
        description="Modules whose activations IA³ rescales with a learned vector; empty: k_proj, v_proj, down_proj.",
    )
    feedforward_modules: ModuleNames = Field(
        None,
        description="Those of the target modules whose input (not output) is rescaled: the MLP's; empty: "
        "down_proj. Must be among the target modules.",
    )

    _names = field_validator("target_modules", "feedforward_modules")(_module_names)

    @model_validator(mode="after")
    def _feedforward_among_targets(self) -> "IA3Settings":
        if self.feedforward_modules is not None:
            extra = set(self.feedforward_modules) - set(self.target_modules or IA3_TARGETS)
            if extra:
                raise ValueError(f"feedforward_modules {', '.join(sorted(extra))} must also be in target_modules")
        return self

    def _targets(self) -> tuple[list[str], list[str]]:
        targets = self.target_modules or IA3_TARGETS
        feedforward = self.feedforward_modules
        if feedforward is None:
            feedforward = [m for m in IA3_FEEDFORWARD if m in targets]
        return targets, feedforward

    def trainable_parameters(self, shape: ModelShape, total: int) -> int:
        targets, feedforward = self._targets()
        # One scale per feature: per input feature of a feed-forward module, per output feature of the others.
        per_layer = sum(
            fin if any(name == f or name.endswith(f) for f in feedforward) else fout
            for name, (fin, fout) in shape.matching(targets).items()
        )
        return per_layer * shape.layers

    def peft_kwargs(self, base_path: str) -> dict[str, Any]:
        if self.target_modules is None and self.feedforward_modules is None:
            # PEFT's own choice per architecture (the Llama names above for Llama-style bases, c_attn/mlp.c_proj
            # for GPT-2, ...), so a base with other module names trains rather than fails.
            return {}
        targets, feedforward = self._targets()
        return {"target_modules": targets, "feedforward_modules": feedforward}


class PromptTuningSettings(MethodSettings):
    num_virtual_tokens: int = Field(
        20, ge=1, le=1024, description="Learned embeddings placed before every input (the soft prompt's length)."
    )
    init: Literal["random", "text"] = Field(
        "random", description="Start the soft prompt from random vectors, or from the embeddings of init_text."
    )
    init_text: Text | None = Field(
        None,
        max_length=2000,
        description='With init "text": words describing the task, e.g. "Answer the question politely:".',
    )

    @model_validator(mode="after")
    def _text_when_asked(self) -> "PromptTuningSettings":
        if self.init == "text" and not (self.init_text or "").strip():
            raise ValueError('init_text is required when init is "text"')
        if self.init == "random" and self.init_text:
            raise ValueError('init_text is only read when init is "text" (set init to "text", or leave it out)')
        return self

    def trainable_parameters(self, shape: ModelShape, total: int) -> int:
        return self.num_virtual_tokens * shape.hidden

    def extra_positions(self) -> int:
        return self.num_virtual_tokens

    def peft_kwargs(self, base_path: str) -> dict[str, Any]:
        if self.init == "random":
            return {"num_virtual_tokens": self.num_virtual_tokens, "prompt_tuning_init": "RANDOM"}
        # PEFT tokenizes the text with the base's tokenizer and repeats or cuts it to num_virtual_tokens.
        return {
            "num_virtual_tokens": self.num_virtual_tokens,
            "prompt_tuning_init": "TEXT",
            "prompt_tuning_init_text": self.init_text,
            "tokenizer_name_or_path": base_path,
        }


class PrefixTuningSettings(MethodSettings):
    num_virtual_tokens: int = Field(
        20, ge=1, le=1024, description="Learned key/value pairs placed before the input in every attention layer."
    )
    prefix_projection: bool = Field(
        False,
        description="Learn the prefixes through a two-layer MLP (more parameters while training, often steadier); "
        "off: learn them directly.",
    )

    def trainable_parameters(self, shape: ModelShape, total: int) -> int:
        # A key and a value per layer and virtual token, as wide as the key/value projections (GQA: narrower).
        out = shape.layers * 2 * shape.kv
        if not self.prefix_projection:
            return self.num_virtual_tokens * out
        hidden = shape.kv  # PEFT's encoder_hidden_size defaults to the token width
        return self.num_virtual_tokens * shape.kv + (shape.kv * hidden + hidden) + (hidden * out + out)

    def peft_kwargs(self, base_path: str) -> dict[str, Any]:
        return {"num_virtual_tokens": self.num_virtual_tokens, "prefix_projection": self.prefix_projection}

    def extra_positions(self) -> int:
        return self.num_virtual_tokens


class NoSettings(Settings):
    """The objective has nothing of its own to set."""


class DpoSettings(Settings):
    beta: float = Field(
        0.1, gt=0, le=10.0, description="How strongly the policy may move away from the reference model."
    )


class KtoSettings(Settings):
    beta: float = Field(
        0.1, gt=0, le=10.0, description="How far the policy may move from the reference model (higher: less far)."
    )
    desirable_weight: float = Field(
        1.0, gt=0, le=100.0, description="Weight of the desirable answers' loss; raise it when they are the fewer."
    )
    undesirable_weight: float = Field(
        1.0, gt=0, le=100.0, description="Weight of the undesirable answers' loss; raise it when they are the fewer."
    )
