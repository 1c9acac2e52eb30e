from datetime import datetime
from typing import Annotated

from pydantic import AfterValidator, AliasPath, BaseModel, ConfigDict, Field, StringConstraints

from backend.schemas import Text

# Hub rules: owner and name of letters, digits, '-', '_', '.' ('..' and '--' are refused below).
HUB_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$"
# A commit sha pins exactly; a tag or branch name is resolved to its commit when the worker downloads.
REVISION_PATTERN = r"^([0-9a-f]{40}|[A-Za-z0-9][A-Za-z0-9._/-]{0,127})$"


def _no_dot_dot(value: str) -> str:
    # Never a path out of a folder, and the Hub itself refuses '..' and '--' in names.
    if ".." in value or "--" in value:
        raise ValueError("must not contain '..' or '--'")
    return value


class ModelRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    source: str = Field(description='"local" | "job" | "upload" | "gguf" | "hub"')
    revision: str | None = Field(None, description="Hub imports: the revision asked for.")
    status: str = Field("ready", description='"importing" | "ready" | "failed"; only ready models can be trained.')
    error: str | None = Field(None, description="Why the import failed.")
    architecture: str
    parameters: int
    shared: bool
    job_id: int | None
    hub_id: str | None = Field(None, validation_alias=AliasPath("details", "hub_id"))
    commit: str | None = Field(
        None, validation_alias=AliasPath("details", "commit"), description="Hub imports: the commit downloaded."
    )
    trust_remote_code: bool = Field(
        False,
        validation_alias=AliasPath("details", "trust_remote_code"),
        description="Whether the model's own Python code may run when it is loaded (admins only turn it on).",
    )
    created_at: datetime


class ModelFile(BaseModel):
    name: str = Field(description="Path inside the model directory.")
    size_bytes: int


class ModelConfigSummary(BaseModel):
    """What config.json and the tokenizer files say, for people choosing a base model."""

    layers: int | None = None
    hidden_size: int | None = None
    attention_heads: int | None = None
    kv_heads: int | None = None
    vocab_size: int | None = None
    context_length: int | None = Field(None, description="max_position_embeddings (or n_positions).")
    dtype: str | None = Field(None, description="The dtype the weights were saved in, per config.json.")
    chat_template: bool = Field(False, description="Whether the tokenizer carries a chat template.")


class ImportProgress(BaseModel):
    """Where a running import is: stage `step` of `steps`, with bytes or tensors done when known."""

    stage: str
    step: int
    steps: int
    done: int | None = None
    total: int | None = None
    unit: str | None = Field(None, description='"tensors" | "files" | "bytes": what `done` and `total` count.')
    history: list[dict[str, str]] = Field(default_factory=list, description="Stages so far, with start times.")


class ModelJob(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    kind: str
    status: str
    created_at: datetime


class ModelDetail(ModelRead):
    """One model with what its page shows: files, size on disk, config summary, import progress, jobs."""

    files: list[ModelFile] = Field(default_factory=list)
    size_bytes: int = 0
    config: ModelConfigSummary | None = None
    progress: ImportProgress | None = Field(None, validation_alias=AliasPath("details", "progress"))
    jobs: list[ModelJob] = Field(default_factory=list, description="Jobs you may see that started from it.")


class ModelList(BaseModel):
    items: list[ModelRead]


class ModelImport(BaseModel):
    """A model to download from the Hugging Face Hub, pinned to a revision."""

    model_config = ConfigDict(extra="forbid")

    hub_id: Annotated[str, StringConstraints(pattern=HUB_ID_PATTERN), AfterValidator(_no_dot_dot)] = Field(
        description='Repository id on the Hub, "owner/name".', examples=["HuggingFaceTB/SmolLM2-135M-Instruct"]
    )
    revision: Annotated[str, StringConstraints(pattern=REVISION_PATTERN), AfterValidator(_no_dot_dot)] = Field(
        description="A 40-hex commit sha (exact) or a tag/branch, resolved to its commit at download."
    )
    name: Text = Field("", max_length=200, description="Display name; empty means the repository id.")


class ModelUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Text | None = Field(None, min_length=1, max_length=200)
    trust_remote_code: bool | None = Field(
        None, description="Let the model's own Python code run when loaded (admins only: it runs on the workers)."
    )


class ModelUploadCreate(BaseModel):
    """Start a resumable chunked upload of a model file; finish it with POST /api/models and its `upload_id`."""

    model_config = ConfigDict(extra="forbid")

    filename: Text = Field(min_length=1, max_length=255, description="A .zip of a Hugging Face directory or a .gguf.")
    size: int = Field(ge=0, le=2**62, description="Total bytes the upload will carry.")
    name: Text = Field("", max_length=200, description="Model name; empty means the file name.")


class ModelUploadRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    filename: str
    size_bytes: int
    received_bytes: int = Field(description="Bytes accepted so far: the offset the next chunk must start at.")
    chunk_size: int = Field(description="Suggested chunk size in bytes (PUT /api/uploads/{id}).")


class PresetRead(BaseModel):
    name: str
    parameters: int
    config: dict[str, int]
