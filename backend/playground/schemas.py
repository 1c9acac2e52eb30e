"""Playground requests and views: one prompt answered by a base model, or by a job's adapter or checkpoint."""

from datetime import datetime
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from backend.dataset.formats import chat
from backend.dataset.formats.errors import FormatError
from backend.schemas import DbId, Text

MAX_NEW_TOKENS = 1024
MAX_PROMPT_CHARS = 20_000


class GenerationCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt: Text = Field(min_length=1, max_length=MAX_PROMPT_CHARS, description="What the model answers.")
    model_id: DbId | None = Field(None, description="A base model to answer with (or job_id, not both).")
    job_id: DbId | None = Field(None, description="A job whose trained adapter or model answers.")
    checkpoint: str | None = Field(
        None,
        pattern=r"^checkpoint-\d{1,12}$",
        description="One of the job's checkpoints (e.g. checkpoint-20) instead of its final output.",
    )
    max_new_tokens: int = Field(128, ge=1, le=MAX_NEW_TOKENS, description="The most tokens generated.")
    temperature: float = Field(0.0, ge=0.0, le=2.0, description="0 answers greedily; higher samples more freely.")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling: the probability mass sampled from.")
    chat: bool | None = Field(
        None,
        description="Lay the prompt out as a chat turn (the model's chat template, else Alpaca), as SFT trained on. "
        "Default: on for a model with a chat template and for sft/dpo/kto jobs, off otherwise.",
    )

    tools: list[dict[str, Any]] | str | None = Field(
        None,
        description="Tool definitions the model may call: a list of function schemas (OpenAI's "
        '{"type": "function", "function": {"name", "description", "parameters"}}, or bare {"name", ...}), or a '
        "JSON string of one. They go to the chat template as training laid them out; a call in the answer is "
        "returned as tool_calls.",
    )

    @field_validator("tools", mode="before")
    @classmethod
    def _tools(cls, value: Any) -> list[dict[str, Any]] | None:
        if isinstance(value, str) and len(value) > MAX_PROMPT_CHARS:
            raise ValueError(f"at most {MAX_PROMPT_CHARS} characters of tool definitions")
        try:
            return chat.tools(value)
        except FormatError as exc:
            where = exc.field.removeprefix("tools") if exc.field else ""
            raise ValueError(f"{where + ': ' if where else ''}{exc.message}") from None

    @model_validator(mode="after")
    def _one_target(self) -> Self:
        if (self.model_id is None) == (self.job_id is None):
            raise ValueError("give exactly one of model_id (a base model) or job_id (a trained job)")
        if self.checkpoint is not None and self.job_id is None:
            raise ValueError("checkpoint needs job_id: it names one of that job's checkpoints")
        if self.tools and self.chat is False:
            raise ValueError("tools need the chat layout (chat: true or left out): raw text has no place for them")
        return self


class GenerationRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    model_id: int | None
    job_id: int | None
    checkpoint: str | None
    prompt: str
    params: dict[str, Any]
    status: str
    output: str
    error: str | None
    created_at: datetime
    finished_at: datetime | None
    target: str = ""  # what answered, in words: "model tiny (#1)", "job ft (#2), checkpoint-10"
    tool_calls: list[dict[str, Any]] = Field(
        default_factory=list,
        description='Tool calls found in the output, OpenAI style: {"type": "function", "function": {"name", '
        '"arguments" (a JSON string)}}.',
    )


class GenerationList(BaseModel):
    items: list[GenerationRead]
