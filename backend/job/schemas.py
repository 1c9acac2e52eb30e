"""Job request/response shapes. Every hyperparameter carries a description and bounds: they drive the form."""

from datetime import datetime
from pathlib import PurePath
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from backend.job.preflight import Problem
from backend.method import registry
from backend.model.presets import PRESETS
from backend.schemas import DbId, Text

JobKind = Literal["pretrain", "finetune"]
JobStatus = Literal["queued", "running", "paused", "succeeded", "failed", "cancelled"]
WatchPrompt = Annotated[Text, Field(min_length=1, max_length=2000)]


class Hyperparameters(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    max_steps: int | None = Field(
        None, ge=1, le=10_000_000, description="Optimizer steps to run; overrides epochs when set."
    )
    epochs: float | None = Field(
        None, gt=0, le=1000, description="Passes over the training data (used when max_steps is empty)."
    )
    learning_rate: float = Field(
        3e-4, gt=0, le=1.0, description="Peak learning rate (linear warmup, then linear decay)."
    )
    batch_size: int = Field(
        8,
        ge=1,
        le=4096,
        description="Sequences per micro-batch (over all data-parallel processes); "
        "an optimizer step sees batch_size x gradient_accumulation_steps.",
    )
    max_length: int = Field(
        256, ge=8, le=32768, description="Tokens per sequence: block size when packing, cut-off for SFT."
    )
    min_kept_fraction: float = Field(
        0.9,
        ge=0,
        le=1,
        description="Refuse to start when fewer than this share of the examples fit in max_length (the rest would "
        "be dropped).",
    )
    warmup_steps: int = Field(0, ge=0, le=1_000_000, description="Steps of linear learning-rate warmup.")
    weight_decay: float = Field(0.0, ge=0, le=1.0, description="AdamW weight decay.")
    gradient_accumulation_steps: int = Field(
        1, ge=1, le=1024, description="Micro-batches summed per optimizer step: a larger batch in the same memory."
    )
    gradient_checkpointing: bool = Field(
        False, description="Recompute activations in the backward pass: much less memory for ~30% more time."
    )
    torch_compile: bool = Field(
        False,
        description="Compile the model with torch.compile (TorchInductor) before the first step. Faster steps "
        "after a compilation of a minute or two: on this project's 2-core CPU, small pretraining took 1.8x less per "
        "step and 1.14x less wall time over 30 steps, compilation included; on GPUs the usual gain is larger. Pays "
        "off on long runs; batches of changing length (unpacked SFT) may compile again.",
    )
    validation_fraction: float = Field(
        0.1, ge=0, lt=1, description="Share of the records held out to measure eval loss."
    )
    tokenizer_sample_mb: int = Field(
        100,
        ge=1,
        le=100_000,
        description="Pretraining with a tokenizer of its own: megabytes of training text, documents drawn across "
        "the whole corpus, that the BPE tokenizer learns from (more: a slightly better vocabulary, slower start).",
    )
    seed: int = Field(42, ge=0, le=2**31 - 1, description="Seed for initialization, shuffling and the split.")
    checkpoint_steps: int | None = Field(
        None, ge=1, le=10_000_000, description="Save a checkpoint every N steps (empty: only at the end)."
    )
    checkpoint_minutes: float | None = Field(
        15.0,
        ge=0,
        le=10_080,
        description="Also save a checkpoint whenever this many minutes have passed since the last one, so a "
        "restart loses at most about that much training (0: off).",
    )
    eval_steps: int | None = Field(
        None,
        ge=1,
        le=10_000_000,
        description="Evaluate every N steps on the eval sample (empty: up to ten times per run, fewer when a short "
        "run's evaluations would cost more than eval_budget of its training).",
    )
    eval_max_examples: int = Field(
        256,
        ge=1,
        le=1_000_000,
        description="Evaluations during the run use a fixed sample of at most this many held-out examples; the "
        "whole held-out set is evaluated once at the end.",
    )
    eval_budget: float = Field(
        0.1,
        gt=0,
        le=1,
        description="When eval_steps is empty: the share of the training compute all evaluations together may "
        "take (base and final included); a short run then evaluates fewer times, on a smaller sample.",
    )
    packing: bool = Field(
        True,
        description="SFT: lay each batch's examples out several per row of max_length, each attending only to "
        "itself (the same examples and loss, far less padding). Not used by methods with virtual tokens "
        "(prompt and prefix tuning): the job's log says so.",
    )
    logging_steps: int = Field(1, ge=1, le=100_000, description="Log loss and learning rate every N steps.")
    keep_checkpoints: int = Field(
        2, ge=1, le=100, description="Checkpoints kept on disk (the newest); each holds weights and optimizer state."
    )
    early_stopping_patience: int | None = Field(
        None, ge=1, le=1000, description="Stop after this many evaluations without a lower eval loss (empty: off)."
    )
    overfit_warning_evals: int | None = Field(
        3,
        ge=1,
        le=1000,
        description="Warn of overfitting when the eval loss has risen this many evaluations in a row while the "
        "training loss fell (empty: off).",
    )
    divergence_factor: float = Field(
        4.0,
        gt=1.0,
        le=1000.0,
        description="Fail the job when the loss exceeds this multiple of its best smoothed value after warmup.",
    )
    divergence_rollbacks: int = Field(
        0,
        ge=0,
        le=10,
        description="On divergence, go back to the last checkpoint with half the learning rate, up to this many "
        "times (0: fail the job at once).",
    )

    @model_validator(mode="after")
    def _steps_or_epochs(self) -> Self:
        if self.max_steps is None and self.epochs is None:
            self.epochs = 1.0
        return self


# Settings presets of the new-job form, one place for all. Each sets the same fields (so presets do not mix when
# clicked in turn), per kind for the learning rate: random weights take a larger step than a pretrained base,
# whose features a fine-tune should nudge, not overwrite. Fields no preset names keep the user's values.
HYPERPARAMETER_PRESETS: dict[str, dict[str, Any]] = {
    "quick": {
        "description": "A smoke test: 60 steps, an eval every 20, no intermediate checkpoints. Minutes on a CPU.",
        "common": {
            "max_steps": 60,
            "epochs": None,
            "eval_steps": 20,
            "logging_steps": 1,
            "checkpoint_steps": None,
            "early_stopping_patience": None,
            "warmup_steps": 0,
            "weight_decay": 0.0,
            "keep_checkpoints": 2,
        },
        "pretrain": {"learning_rate": 1e-3},
        "finetune": {"learning_rate": 2e-4},
    },
    "balanced": {
        "description": "One pass over the data with a short warmup and about ten evals.",
        "common": {
            "max_steps": None,
            "epochs": 1,
            "eval_steps": None,
            "logging_steps": 5,
            "checkpoint_steps": None,
            "early_stopping_patience": None,
            "warmup_steps": 20,
            "weight_decay": 0.0,
            "keep_checkpoints": 2,
        },
        "pretrain": {"learning_rate": 6e-4},
        "finetune": {"learning_rate": 2e-4},
    },
    "thorough": {
        "description": "Three epochs, a checkpoint every 200 steps and early stopping after 3 evals without gain.",
        "common": {
            "max_steps": None,
            "epochs": 3,
            "eval_steps": 100,
            "logging_steps": 5,
            "checkpoint_steps": 200,
            "keep_checkpoints": 3,
            "early_stopping_patience": 3,
            "warmup_steps": 50,
            "weight_decay": 0.01,
        },
        "pretrain": {"learning_rate": 6e-4},
        "finetune": {"learning_rate": 1e-4},
    },
}


def preset_values(name: str, kind: str) -> dict[str, Any]:
    """The hyperparameters preset `name` sets for a job of `kind` (None: the field is emptied)."""
    preset = HYPERPARAMETER_PRESETS[name]
    return {**preset["common"], **preset[kind]}


class JobCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Text = Field("", max_length=200)
    kind: JobKind
    dataset_id: DbId
    base_model: DbId | None = Field(None, description="Id from /api/models; required for finetune.")
    validation_dataset_id: DbId | None = Field(
        None, description="A separate validation dataset (same shape); replaces validation_fraction."
    )
    architecture: str | None = Field(None, description="Preset for pretrain: " + ", ".join(PRESETS))
    tokenizer_model: DbId | None = Field(
        None, description="Pretrain: reuse this model's tokenizer instead of training one on the corpus."
    )
    method: str | None = Field(
        None, description="Which weights train: " + ", ".join(registry.METHODS) + " (GET /api/methods describes each)."
    )
    objective: str | None = Field(
        None,
        description="What the loss is: " + ", ".join(registry.OBJECTIVES) + "; empty: the natural one for the "
        "dataset's shape.",
    )
    method_config: dict[str, Any] = Field(
        default_factory=dict,
        description="The method's own settings, e.g. {\"r\": 16} for lora (GET /api/methods lists each method's "
        "fields, defaults and bounds); unset fields take their defaults.",
    )
    objective_config: dict[str, Any] = Field(
        default_factory=dict,
        description='The objective\'s own settings, e.g. {"beta": 0.1} for dpo; unset fields take their defaults.',
    )
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)
    watch_prompts: list[WatchPrompt] = Field(
        default_factory=list, max_length=5, description="Prompts generated at every eval to watch answers change."
    )
    cloned_from: DbId | None = Field(
        None, description='The job this one was cloned and edited from ("Clone and edit"); recorded, not copied.'
    )
    force: bool = Field(
        False,
        description="Queue the job even when its memory estimate exceeds every live worker's memory (not stored); "
        "placement then does not judge its memory either.",
    )
    priority: int = Field(
        0,
        ge=-1000,
        le=1000,
        description="Among queued jobs, a higher priority is placed on a free worker first (then the oldest). "
        "Above 0: administrators only; anyone may lower their own job's.",
    )

    # Old-style settings of a method or objective found in `hyperparameters` (lora_r, dpo_beta, ...): applied by
    # the job service once the objective is known (it may come from the dataset's shape).
    _legacy: dict[str, Any] = PrivateAttr(default_factory=dict)

    @model_validator(mode="wrap")
    @classmethod
    def _lift_legacy_settings(cls, data: Any, handler: Any) -> Any:
        legacy: dict[str, Any] = {}
        if isinstance(data, dict) and isinstance(data.get("hyperparameters"), dict):
            hp = dict(data["hyperparameters"])
            legacy = {k: hp.pop(k) for k in list(hp) if registry.is_legacy_key(k)}
            data = {**data, "hyperparameters": hp}
        made = handler(data)
        if legacy:
            made._legacy = legacy
        return made

    @field_validator("method")
    @classmethod
    def _known_method(cls, v: str | None) -> str | None:
        if v is not None and v not in registry.METHODS:
            raise ValueError(f"unknown method {v!r}: methods are {', '.join(registry.METHODS)}")
        return v

    @field_validator("objective")
    @classmethod
    def _known_objective(cls, v: str | None) -> str | None:
        if v is not None and v not in registry.OBJECTIVES:
            raise ValueError(f"unknown objective {v!r}: objectives are {', '.join(registry.OBJECTIVES)}")
        return v

    @model_validator(mode="after")
    def _kind_fields(self) -> Self:
        if self.kind == "pretrain":
            if self.architecture not in PRESETS:
                raise ValueError(f"architecture must be one of {', '.join(PRESETS)} for a pretrain job")
            if self.base_model is not None:
                raise ValueError("base_model is for finetune jobs; pretrain starts from random weights")
            allowed = [o.name for o in registry.OBJECTIVES.values() if "pretrain" in o.kinds]
            if self.objective not in (None, *allowed):
                raise ValueError(f"pretrain jobs use objective {' or '.join(allowed)}")
            if self.method is not None and "pretrain" not in registry.method(self.method).kinds:
                raise ValueError("pretrain jobs train every weight (method full)")
            self.objective = self.objective or allowed[0]
        else:
            if self.base_model is None:
                raise ValueError("base_model is required for a finetune job")
            if self.architecture is not None:
                raise ValueError("architecture is for pretrain jobs; finetune starts from base_model")
            if self.tokenizer_model is not None:
                raise ValueError("tokenizer_model is for pretrain jobs; finetune uses the base model's tokenizer")
            # objective: from the dataset's shape when empty
        self.method = self.method or registry.default_method(self.kind)
        if self.objective and (problem := batch_problem(self.objective, self.hyperparameters.batch_size)):
            raise ValueError(f"hyperparameters.batch_size: {problem}")
        return self


def batch_problem(objective: str, batch_size: int) -> str | None:
    """Why `objective` cannot train with this batch size (KTO estimates its KL term from the other answers)."""
    spec = registry.objective(objective)
    if batch_size >= spec.min_batch_size:
        return None
    return f"objective {objective} needs at least {spec.min_batch_size} sequences per batch, got {batch_size} " + (
        f"({spec.min_batch_reason})" if spec.min_batch_reason else ""
    )


class JobRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    kind: str
    status: str
    method: str | None
    objective: str
    architecture: str | None
    tokenizer_model_id: int | None = None
    dataset_id: int
    base_model_id: int | None
    validation_dataset_id: int | None
    hyperparameters: dict[str, Any]
    method_config: dict[str, Any] = Field(default_factory=dict, description="The method's settings, defaults filled.")
    objective_config: dict[str, Any] = Field(
        default_factory=dict, description="The objective's settings, defaults filled."
    )
    resolved_config: dict[str, Any]
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    worker: str | None
    device: str | None
    cancel_requested: bool
    pause_requested: bool
    resume_checkpoint: str | None
    attempt: int = Field(
        description="How many times a worker has started this job; each start is a new attempt (its fencing token)."
    )
    attempt_limit: int | None = Field(
        None,
        description="The attempt after which a lost worker fails the job instead of queueing it again "
        "(STUDIO_MAX_ATTEMPTS counted from the last time a person started or resumed it).",
    )
    watch_prompts: list[str]
    cloned_from_id: int | None
    current_step: int
    total_steps: int | None
    error: str | None
    final_loss: float | None
    final_eval_loss: float | None
    output_model_id: int | None = None
    eta_seconds: float | None = None
    dataset_name: str | None = None
    base_model_name: str | None = None
    duration_seconds: float | None = Field(
        None, description="Training time of the latest attempt: start to finish, or to now while it runs."
    )
    priority: int = Field(0, description="Higher is placed first among queued jobs.")
    waiting_reason: str | None = Field(
        None, description="Why a queued job is not on a worker yet (no live worker fits it, all are busy, ...)."
    )

    @field_validator("resume_checkpoint")
    @classmethod
    def _checkpoint_name(cls, v: str | None) -> str | None:
        return PurePath(v).name if v else None  # the name, not where the server keeps it


class JobList(BaseModel):
    items: list[JobRead]
    # The `cursor` of the next page (older jobs), or None on the last one.
    next_cursor: int | None = None


class EventRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    level: str
    message: str
    created_at: datetime


class MetricRead(BaseModel):
    id: int
    step: int
    created_at: datetime
    values: dict[str, float]


class ArtifactRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    name: str
    size_bytes: int
    sha256: str
    created_at: datetime
    url: str = ""


class JobClone(BaseModel):
    """What a clone changes; everything else is copied from the source job."""

    model_config = ConfigDict(extra="forbid")

    name: Text | None = Field(None, max_length=200)
    hyperparameters: dict[str, Any] = Field(
        default_factory=dict, description="Merged over the source job's hyperparameters, then validated."
    )
    method_config: dict[str, Any] = Field(
        default_factory=dict, description="Merged over the source job's method settings, then validated."
    )
    objective_config: dict[str, Any] = Field(
        default_factory=dict, description="Merged over the source job's objective settings, then validated."
    )
    watch_prompts: list[WatchPrompt] | None = Field(None, max_length=5)
    force: bool = Field(False, description="Queue it even when it fits no live worker's memory (not stored).")


class JobResume(BaseModel):
    """Which checkpoint a resume starts from; the latest when empty."""

    model_config = ConfigDict(extra="forbid")

    checkpoint: Text | None = Field(
        None,
        max_length=200,
        description="A checkpoint name from /checkpoints, e.g. checkpoint-40. Metrics, watch-prompt answers and "
        "checkpoints after its step are dropped, so the curve holds one value per step.",
    )


class CheckpointRead(BaseModel):
    name: str
    step: int
    size_bytes: int
    created_at: datetime


class SampleRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    step: int
    prompt: str
    output: str
    created_at: datetime


class CompareCurvePoint(BaseModel):
    step: int
    seconds: float = Field(description="Wall time since the run's first logged point.")
    tokens: float | None = Field(None, description="Training tokens consumed by this step.")
    flops: float | None = Field(None, description="Training FLOPs spent by this step (≈ tokens x FLOPs per token).")
    values: dict[str, float]


class CompareRun(BaseModel):
    id: int
    name: str
    kind: str
    status: str
    method: str | None
    objective: str
    architecture: str | None
    base_model: str | None
    dataset: str | None
    dataset_records: int | None
    dataset_bytes: int | None
    trainable_parameters: int | None
    total_parameters: int | None
    trainable_fraction: float | None = Field(
        None,
        description="The share of the base's parameters that trained (0.004 is 0.4%), as the worker counted them; an "
        "adapter's own parameters are left out of the base's count.",
    )
    steps: int
    total_steps: int | None = Field(None, description="The steps planned (the worker's count once it started).")
    tokens: float | None
    flops: float | None
    seconds: float | None
    tokens_per_second: float | None = Field(None, description="tokens / seconds: training throughput, evals included.")
    peak_memory_bytes: int | None = Field(
        None, description="Peak memory of the last training point that logged it (none before a worker logs it)."
    )
    final_loss: float | None
    final_eval_loss: float | None
    best_eval_loss: float | None
    final_eval_bits_per_byte: float | None = Field(
        None,
        description="The last validation loss as bits per byte of text: unlike a loss per token, comparable "
        "between runs whose tokenizers differ (a model trained from scratch vs a fine-tuned base).",
    )
    final_eval_accuracy: float | None = Field(
        None,
        description="The last logged eval_accuracy (classification) or eval_token_accuracy (SFT), as a fraction.",
    )
    artifact_bytes: int | None = Field(
        None,
        description="Size on disk of the trained output: adapter.zip for an adapter method, model.zip otherwise.",
    )
    curve: list[CompareCurvePoint]
    tokenizer: str | None = Field(
        None, description="Whose tokenizer the run uses: its base model's (by name or Hub id), or its own."
    )


class CompareRead(BaseModel):
    runs: list[CompareRun]
    diff: dict[str, list[Any]] = Field(
        description="Settings that differ: name → one value per run (datasets and models by name)."
    )
    first_curve: str = Field(
        "eval_loss",
        description="The curve to show first: eval_bits_per_byte when the runs use different tokenizers (and all "
        "logged it), since a loss per token is then not like for like; else eval_loss.",
    )


class EstimateRead(BaseModel):
    """What a job will cost before it runs; figures are estimates, `notes` say what they rest on."""

    objective: str
    total_parameters: int
    trainable_parameters: int
    tokens_per_epoch: float = Field(description="Supervised tokens in one pass over the training data.")
    tokens_exact: bool = Field(description="True when counted by the worker's tokenizer, not guessed from bytes.")
    steps: int
    tokens: float = Field(description="Token positions the run processes (steps x batch x max_length).")
    flops_per_token: float
    flops: float
    seconds: float | None = Field(None, description="From the FLOP/s finished runs reached on the worker's device.")
    memory_bytes: int
    device: str | None
    device_memory_bytes: int | None
    fits: bool | None = Field(None, description="Whether memory_bytes fits in 90% of the device memory.")
    memory_bytes_cuda: int | None = Field(
        None, description="The peak on a CUDA worker (null when the config lacks the sizes to count it)."
    )
    memory_bytes_cpu: int | None = Field(None, description="The peak on a CPU worker (null likewise).")
    disk_bytes: int | None = Field(
        None,
        description="What the run writes to the worker's disk at most: the checkpoints kept (weights and optimizer "
        "state) plus the one being written, and the final weights (null when the config lacks the sizes).",
    )
    advice: list[str] = Field(description="What to change when it does not fit.")
    notes: list[str]
    dry_run: dict[str, Any] | None = Field(None, description="The dataset's token statistics for these settings.")
    problems: list[Problem] = Field(
        default_factory=list,
        description="What the pre-flight check finds in the dry run: each stops the job before its first step.",
    )
