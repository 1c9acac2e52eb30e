"""Weight exports: what to package (the final output or a checkpoint), in which form and dtype, and the view."""

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

ExportFormat = Literal["adapter", "merged", "model"]
ExportDtype = Literal["float32", "float16", "bfloat16"]

# What each kind of trained weights can be exported as: an adapter as is or folded into its base; a full model.
FORMATS: dict[str, tuple[str, ...]] = {"adapter": ("adapter", "merged"), "model": ("model",)}
ACTIVE = ("queued", "running")


class ExportCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    checkpoint: str | None = Field(
        None,
        pattern=r"^checkpoint-\d{1,12}$",
        description="One of the job's checkpoints (e.g. checkpoint-40); null exports the job's final output.",
    )
    format: ExportFormat = Field(
        description="adapter: the LoRA adapter as is; merged: the adapter folded into its base (a plain "
        "transformers model); model: a full fine-tune's or pretrain's model."
    )
    dtype: ExportDtype = Field("float32", description="The floating-point type the weights are saved in.")


class ExportRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    job_id: int
    owner_id: int
    checkpoint: str | None
    format: str
    dtype: str
    status: str
    # {"phase": "loading" | "merging" | "saving" | "zipping", "done": n, "total": n, "unit": "files" | ...}
    progress: dict[str, Any] | None
    artifact_name: str | None
    size_bytes: int | None
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    url: str | None = None  # the artifact's download address, once done


class ExportList(BaseModel):
    items: list[ExportRead]
