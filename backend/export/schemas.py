"""Weight exports: what to package (the final output or a checkpoint), in which form and dtype, and the view."""

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from backend.export.gguf import GgufType

ExportFormat = Literal["adapter", "merged", "model", "gguf"]
ExportDtype = Literal["float32", "float16", "bfloat16"]

# What each kind of trained weights can be exported as: an adapter as is or folded into its base; a full model;
# either as a GGUF file (an adapter merged first).
FORMATS: dict[str, tuple[str, ...]] = {"adapter": ("adapter", "merged", "gguf"), "model": ("model", "gguf")}
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
        "transformers model); model: a full fine-tune's or pretrain's model; gguf: a GGUF file for llama.cpp and "
        "Ollama (with a Modelfile), an adapter merged into its base first."
    )
    dtype: ExportDtype = Field("float32", description="The floating-point type the weights are saved in.")
    gguf_type: GgufType | None = Field(
        None,
        description="gguf only: the tensor type of the GGUF's matrices (f16 by default; q8_0 and q4_0 quantize "
        "matrices whose rows split into 32-value blocks, the others stay f16; norms are f32).",
    )

    @property
    def stored_dtype(self) -> str:
        """What the export's `dtype` column holds: the GGUF type for a GGUF export (one column, one meaning:
        how the weights are stored)."""
        return (self.gguf_type or "f16") if self.format == "gguf" else self.dtype


class ExportRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    job_id: int
    owner_id: int
    checkpoint: str | None
    format: str
    dtype: str  # float32 | float16 | bfloat16; a gguf export's GGUF type (f16 | bf16 | q8_0 | q4_0)
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
