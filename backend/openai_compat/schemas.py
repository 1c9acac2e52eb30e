"""Request bodies of the OpenAI-compatible API, with OpenAI's names and bounds (so a refusal names OpenAI's
parameter, not the studio field it becomes). Responses are plain dicts shaped like OpenAI's objects (views.py)."""

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

Auto = Literal["auto"]
Suffix = Annotated[str, StringConstraints(max_length=64, pattern=r"^[A-Za-z0-9._-]*$")]
MetadataKey = Annotated[str, StringConstraints(min_length=1, max_length=64)]
MetadataValue = Annotated[str, StringConstraints(max_length=512)]
# A stop sequence is looked for in the answer after every piece the worker writes: a few words, not a document.
Stop = Annotated[str, StringConstraints(max_length=256)]
# The turns of one conversation (their characters are capped too: inference.MAX_CONVERSATION_CHARS).
MAX_MESSAGES = 1000


class Hyperparameters(BaseModel):
    """A method's hyperparameters; "auto" (or leaving one out) takes the studio's default (README)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    n_epochs: Auto | Annotated[int, Field(ge=1, le=50)] = "auto"
    batch_size: Auto | Annotated[int, Field(ge=1, le=256)] = "auto"
    learning_rate_multiplier: Auto | Annotated[float, Field(gt=0, le=10)] = "auto"


class DpoHyperparameters(Hyperparameters):
    beta: Auto | Annotated[float, Field(gt=0, le=2)] = "auto"


class Supervised(BaseModel):
    model_config = ConfigDict(extra="forbid")
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)


class Dpo(BaseModel):
    model_config = ConfigDict(extra="forbid")
    hyperparameters: DpoHyperparameters = Field(default_factory=DpoHyperparameters)


class Method(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["supervised", "dpo"]
    supervised: Supervised | None = None
    dpo: Dpo | None = None

    @model_validator(mode="after")
    def _settings_of_its_type(self) -> "Method":
        other = "dpo" if self.type == "supervised" else "supervised"
        if getattr(self, other) is not None:
            raise ValueError(f"method.{other} is given but method.type is {self.type}")
        return self

    def hyperparameters(self) -> Hyperparameters:
        chosen = self.supervised if self.type == "supervised" else self.dpo
        return chosen.hyperparameters if chosen is not None else Hyperparameters()


class JobCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=300, description="A base model's id from GET /v1/models.")
    training_file: str = Field(min_length=1, max_length=100)
    validation_file: str | None = Field(None, max_length=100)
    suffix: Suffix | None = None
    seed: int | None = Field(None, ge=0, le=2**31 - 1)
    metadata: dict[MetadataKey, MetadataValue] | None = Field(None, max_length=16)
    method: Method | None = None
    hyperparameters: Hyperparameters | None = Field(None, description="Deprecated by OpenAI: method's instead.")
    integrations: list[dict[str, Any]] | None = None

    @model_validator(mode="after")
    def _one_place_for_hyperparameters(self) -> "JobCreate":
        if self.hyperparameters is not None and self.method is not None:
            raise ValueError("give hyperparameters in method (the top-level hyperparameters are the old place)")
        return self

    def method_type(self) -> str:
        return self.method.type if self.method is not None else "supervised"

    def chosen_hyperparameters(self) -> Hyperparameters:
        if self.method is not None:
            return self.method.hyperparameters()
        return self.hyperparameters or Hyperparameters()


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")  # name, refusal, audio...: read when known, else ignored

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None


class SamplingParams(BaseModel):
    """What chat completions and completions share."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)  # OpenAI's other options: ignored (README)

    model: str = Field(min_length=1, max_length=300)
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    n: int | None = Field(None, ge=1, le=128)
    stop: Stop | list[Stop] | None = None
    stream: bool | None = False
    stream_options: dict[str, Any] | None = None
    seed: int | None = None
    user: str | None = None

    def stops(self) -> list[str]:
        given = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return [s for s in given if s]


class ChatCompletionCreate(SamplingParams):
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_completion_tokens: int | None = Field(None, ge=1)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None


class CompletionCreate(SamplingParams):
    prompt: str | list[str] = Field(description="One prompt (a list of one is accepted too).")
    echo: bool | None = False
    suffix: str | None = None
