"""The one list of objectives and methods. The job form, the API's validation, the estimate, the playground and
the workers all read it; nothing else names them. Torch-free: workers find their code through the dotted paths.

Adding a method: an entry in METHODS with its settings class (backend/method/settings.py); for a PEFT method that
is all (its settings give the PEFT config's keywords), else a function in workers/methods.py; and a test on a tiny
model named test_<method>_... under tests/workers/ (tests/test_architecture.py checks all three exist).
"""

import functools
from dataclasses import dataclass
from typing import Any, Literal

from backend.method.settings import (
    DpoSettings,
    FreezeSettings,
    FullSettings,
    IA3Settings,
    KtoSettings,
    LoraSettings,
    NoSettings,
    PrefixTuningSettings,
    PromptTuningSettings,
    Settings,
)

Kind = Literal["pretrain", "finetune"]


@dataclass(frozen=True)
class Objective:
    """What a job's loss is, and what it needs of the data, the model and the run."""

    name: str
    label: str
    summary: str
    shapes: tuple[str, ...]  # canonical dataset shapes it trains on
    default_for: tuple[str, ...]  # shapes for which it is the natural choice
    recipes: dict[str, str]  # job kind -> the worker module whose run(ctx) trains it
    metrics: tuple[str, ...]  # what its runs log beyond loss, learning rate and throughput
    settings: type[Settings] = NoSettings
    reference_model: bool = False  # a frozen copy of the start scores every sequence (DPO, KTO)
    chat: bool = False  # the playground lays prompts out as the training data did (chat template)
    sequences_per_example: int = 1  # sequences run through the model per example (a DPO pair: 2)
    backprop_sequences: int = 1  # of those, the ones the backward pass goes through (activations held)
    classifier: bool = False  # a head with one output per class instead of the vocabulary
    min_batch_size: int = 1
    min_batch_reason: str = ""
    packed: bool = False  # text packed into blocks of max_length (nothing cut) instead of examples cut at it
    # A batch's examples may share rows, each attending only to itself (hyperparameter `packing`; workers/packing.py)
    packs_examples: bool = False
    dry_run: str | None = None  # "module:function" of its own token statistics (default: workers.analysis.tokens)

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(self.recipes)

    @property
    def short_label(self) -> str:
        return _short(self.label)


@dataclass(frozen=True)
class Method:
    """Which weights a fine-tune moves, and what that needs and gives."""

    name: str
    label: str
    summary: str
    trains: str  # what it trains, in words (README table, form help)
    share: str  # the typical share of the parameters it trains
    share_range: tuple[float, float] | None  # share's bounds in percent, to check it on a model (None: no fixed share)
    when: str  # when to use it
    settings: type[Settings]
    objectives: tuple[str, ...]
    worker: str  # "module:function" in workers/ that applies it to a loaded base
    peft_config: str | None = None  # the PEFT config class its settings fill (workers/methods.py builds it)
    kinds: tuple[str, ...] = ("finetune",)
    adapter: bool = False  # the base stays frozen; the output is an adapter.zip on top of it
    mergeable: bool = False  # the adapter folds into the base weights (merged.zip, merged exports)
    merge_note: str = ""  # why it cannot be merged (shown in the Export panel)
    requires: Literal["cuda_bitsandbytes"] | None = None  # what a worker needs to run it
    quantized_base: bool = False  # the base is loaded in 4 bits (QLoRA)
    gradient_checkpointing: bool = True  # whether activations may be recomputed in the backward pass
    # Whether examples may share a row: virtual tokens (prompt, prefix) come before the whole row, not each example
    packs_examples: bool = True

    @property
    def short_label(self) -> str:
        return _short(self.label)


def _short(label: str) -> str:
    """A label without its parenthesis: "QLoRA (4-bit base, CUDA workers only)" -> "QLoRA"."""
    return label.split(" (")[0]


FINETUNE_OBJECTIVES = ("sft", "causal_lm", "dpo", "kto", "classification")

OBJECTIVES: dict[str, Objective] = {
    "causal_lm": Objective(
        name="causal_lm",
        label="Causal LM (pretraining, continued pretraining: loss on all text)",
        summary="Next-token prediction on raw text, packed into blocks of max_length.",
        shapes=("text", "prompt_completion"),
        default_for=("text",),
        recipes={"pretrain": "workers.recipes.pretrain", "finetune": "workers.recipes.finetune"},
        metrics=("eval_loss", "eval_perplexity", "eval_bits_per_byte"),
        packed=True,
    ),
    "sft": Objective(
        name="sft",
        label="SFT (loss on the completion)",
        summary="Supervised fine-tuning: the loss falls on the answers only, prompts are context.",
        shapes=("prompt_completion", "messages"),
        default_for=("prompt_completion", "messages"),
        recipes={"finetune": "workers.recipes.finetune"},
        metrics=("eval_loss", "eval_perplexity", "eval_bits_per_byte", "eval_token_accuracy"),
        chat=True,
        packs_examples=True,
    ),
    "dpo": Objective(
        name="dpo",
        label="DPO (preference pairs)",
        summary="Direct preference optimization: raise the chosen answer's likelihood over the rejected one's.",
        shapes=("preference",),
        default_for=("preference",),
        recipes={"finetune": "workers.recipes.dpo"},
        metrics=("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"),
        settings=DpoSettings,
        reference_model=True,
        chat=True,
        sequences_per_example=2,
        backprop_sequences=2,
        dry_run="workers.analysis.tokens:pair_stats",
    ),
    "kto": Objective(
        name="kto",
        label="KTO (answers marked desirable or not)",
        summary="Kahneman-Tversky optimization: unpaired answers, each marked desirable or undesirable.",
        shapes=("unpaired_preference",),
        default_for=("unpaired_preference",),
        recipes={"finetune": "workers.recipes.kto"},
        metrics=("rewards/chosen", "rewards/rejected", "rewards/margins", "kl"),
        settings=KtoSettings,
        reference_model=True,
        chat=True,
        # Its answer, and another record's answer for the KL estimate (forward only).
        sequences_per_example=2,
        min_batch_size=2,
        min_batch_reason="its KL estimate pairs each prompt with another record's answer in the same batch",
        dry_run="workers.analysis.tokens:unpaired_stats",
    ),
    "classification": Objective(
        name="classification",
        label="Classification (a label per text)",
        summary="A new head predicts one of the dataset's labels from the text.",
        shapes=("classification",),
        default_for=("classification",),
        recipes={"finetune": "workers.recipes.classification"},
        metrics=("eval_accuracy", "eval_f1"),
        classifier=True,
        dry_run="workers.analysis.tokens:class_stats",
    ),
}

METHODS: dict[str, Method] = {
    "lora": Method(
        name="lora",
        label="LoRA",
        summary="Small low-rank matrices beside the frozen weights of each adapted layer.",
        trains="a low-rank update B·A of each adapted linear layer (all of them by default)",
        share="0.1-1%",
        share_range=(0.1, 1.0),
        when="the default fine-tune: near full quality at a fraction of the memory; merges into the base",
        settings=LoraSettings,
        objectives=FINETUNE_OBJECTIVES,
        worker="workers.methods:apply_peft",
        peft_config="LoraConfig",
        adapter=True,
        mergeable=True,
    ),
    "qlora": Method(
        name="qlora",
        label="QLoRA (4-bit base, CUDA workers only)",
        summary="LoRA on a base quantized to 4 bits (NF4): the least memory for a large base.",
        trains="LoRA's update, on a base stored in 4-bit NF4",
        share="0.1-1%",
        share_range=(0.1, 1.0),
        when="a base too large for LoRA in 16 bits on the GPU you have",
        settings=LoraSettings,
        objectives=FINETUNE_OBJECTIVES,
        worker="workers.methods:apply_peft",
        peft_config="LoraConfig",
        adapter=True,
        mergeable=True,
        requires="cuda_bitsandbytes",
        quantized_base=True,
    ),
    "ia3": Method(
        name="ia3",
        label="IA³ (learned rescaling vectors)",
        summary="A learned vector rescales the keys, the values and the MLP's input of every layer.",
        trains="one scale per feature of the keys, values and feed-forward input",
        share="~0.01-0.1%",
        share_range=(0.01, 0.1),
        when="the fewest parameters of any adapter that still changes every layer; few-shot data; merges",
        settings=IA3Settings,
        objectives=("sft", "causal_lm", "classification"),
        worker="workers.methods:apply_peft",
        peft_config="IA3Config",
        adapter=True,
        mergeable=True,
    ),
    "prompt_tuning": Method(
        name="prompt_tuning",
        label="Prompt tuning (a learned soft prompt)",
        summary="Learned input embeddings placed before every prompt; the model itself never changes.",
        trains="num_virtual_tokens embedding vectors placed before the input",
        share="<0.01%",
        share_range=(0.0, 0.01),
        when="many tasks on one served base (one tiny prompt per task); works best on large bases",
        settings=PromptTuningSettings,
        objectives=("sft", "causal_lm"),
        worker="workers.methods:apply_peft",
        peft_config="PromptTuningConfig",
        adapter=True,
        merge_note="prompt tuning learns virtual tokens placed before the input, not a change of the weights: "
        "there is nothing to fold into the base, so it ships as an adapter only",
        packs_examples=False,
    ),
    "prefix_tuning": Method(
        name="prefix_tuning",
        label="Prefix tuning (learned keys and values in every layer)",
        summary="Learned key/value pairs prepended in every attention layer; the weights never change.",
        trains="num_virtual_tokens key/value pairs per attention layer",
        share="~0.1%",
        share_range=(0.05, 0.2),  # "about": within a factor of two
        when="generation tasks on a frozen base, a step up from prompt tuning on smaller models",
        settings=PrefixTuningSettings,
        objectives=("sft", "causal_lm"),
        worker="workers.methods:apply_peft",
        peft_config="PrefixTuningConfig",
        adapter=True,
        merge_note="prefix tuning learns keys and values prepended in every attention layer, not a change of the "
        "weights: there is nothing to fold into the base, so it ships as an adapter only",
        # Its prefixes enter as a key/value cache, which recomputing activations does not support.
        gradient_checkpointing=False,
        packs_examples=False,
    ),
    "freeze": Method(
        name="freeze",
        label="Freeze (train the top layers)",
        summary="Every weight of the top layers, the final norm and the head; the rest stays frozen.",
        trains="all weights of the top N transformer layers, the final norm and the output head",
        share="N/layers of the blocks + head",
        share_range=None,
        when="a cheaper full fine-tune whose result is a plain model; lower layers keep general features",
        settings=FreezeSettings,
        objectives=FINETUNE_OBJECTIVES,
        worker="workers.methods:apply_freeze",
    ),
    "full": Method(
        name="full",
        label="Full fine-tuning",
        summary="Every weight trains (pretraining always does).",
        trains="every weight",
        share="100%",
        share_range=(100.0, 100.0),
        when="the most capacity to change the model, at the most memory: optimizer state for every weight",
        settings=FullSettings,
        objectives=FINETUNE_OBJECTIVES,
        worker="workers.methods:apply_full",
        kinds=("pretrain", "finetune"),
    ),
}


def objective(name: str) -> Objective:
    return OBJECTIVES[name]


def method(name: str | None) -> Method:
    """A job's method; jobs stored with none trained every weight."""
    return METHODS[name or "full"]


def default_objective(shape: str) -> str | None:
    """The natural objective for a dataset shape."""
    return next((o.name for o in OBJECTIVES.values() if shape in o.default_for), None)


def default_method(kind: str) -> str:
    return "full" if kind == "pretrain" else "lora"


def packs_examples(kind: str, method_name: str | None, objective_name: str) -> bool:
    """Whether a job's batches may be packed, several examples per row (hyperparameter `packing`)."""
    return kind == "finetune" and OBJECTIVES[objective_name].packs_examples and method(method_name).packs_examples


# Settings that a flat `hyperparameters` object held before each method and objective had its own (API bodies
# written for that keep working; jobs stored then were moved by the 2026_12_03 migration):
# old key -> (the settings class that holds it now, its name there).
LEGACY_KEYS: dict[str, tuple[type[Settings], str]] = {
    "lora_r": (LoraSettings, "r"),
    "lora_alpha": (LoraSettings, "lora_alpha"),
    "lora_dropout": (LoraSettings, "lora_dropout"),
    "lora_target_modules": (LoraSettings, "target_modules"),
    "lora_use_rslora": (LoraSettings, "use_rslora"),
    "lora_use_dora": (LoraSettings, "use_dora"),
    "freeze_trainable_layers": (FreezeSettings, "trainable_layers"),
    "dpo_beta": (DpoSettings, "beta"),
    "kto_beta": (KtoSettings, "beta"),
    "kto_desirable_weight": (KtoSettings, "desirable_weight"),
    "kto_undesirable_weight": (KtoSettings, "undesirable_weight"),
}


def is_legacy_key(key: str) -> bool:
    return key in LEGACY_KEYS


@dataclass
class LegacySplit:
    """An old-style flat dict taken apart: the general hyperparameters, the method's and the objective's settings
    under their new names, and the keys that belong to another method or objective and differ from its default
    (every job stored before the registry held all of them, at their defaults: those carry nothing)."""

    hyperparameters: dict[str, Any]
    method: dict[str, Any]
    objective: dict[str, Any]
    foreign: list[str]


def split_legacy(hyperparameters: dict[str, Any], method_name: str | None, objective_name: str | None) -> LegacySplit:
    method_settings = method(method_name).settings
    objective_settings = OBJECTIVES[objective_name].settings if objective_name in OBJECTIVES else None
    out = LegacySplit({}, {}, {}, [])
    for key, value in hyperparameters.items():
        if key not in LEGACY_KEYS:
            out.hyperparameters[key] = value
            continue
        owner, name = LEGACY_KEYS[key]
        if owner is method_settings:
            out.method[name] = value
        elif owner is objective_settings:
            out.objective[name] = value
        elif value != owner.model_fields[name].default:
            out.foreign.append(key)
    return out


@functools.cache
def catalog() -> dict[str, Any]:
    """The registry as JSON: what GET /api/methods serves and the job form renders (built once: the registry is
    constant; callers copy what they change)."""
    return {
        "objectives": [
            {
                "name": o.name,
                "label": o.label,
                "short_label": o.short_label,
                "summary": o.summary,
                "shapes": list(o.shapes),
                "default_for": list(o.default_for),
                "kinds": list(o.kinds),
                "reference_model": o.reference_model,
                "chat": o.chat,
                "metrics": list(o.metrics),
                "min_batch_size": o.min_batch_size,
                "settings": o.settings.model_json_schema(),
            }
            for o in OBJECTIVES.values()
        ],
        "methods": [
            {
                "name": m.name,
                "label": m.label,
                "short_label": m.short_label,
                "summary": m.summary,
                "trains": m.trains,
                "share": m.share,
                "share_range": list(m.share_range) if m.share_range else None,
                "when": m.when,
                "objectives": list(m.objectives),
                "kinds": list(m.kinds),
                "adapter": m.adapter,
                "mergeable": m.mergeable,
                "merge_note": m.merge_note,
                "requires": m.requires,
                "gradient_checkpointing": m.gradient_checkpointing,
                "peft_config": m.peft_config,
                "settings": m.settings.model_json_schema(),
            }
            for m in METHODS.values()
        ],
    }
