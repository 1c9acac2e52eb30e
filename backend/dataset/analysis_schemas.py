"""Request and response shapes of the dataset analyses (statistics, dry run, hygiene) and of "apply fixes"."""

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from backend.schemas import DbId

AnalysisStatus = Literal["queued", "running", "done", "failed"]


class AnalysisProgress(BaseModel):
    """Where a running analysis is: `done` of `total` records in `phase` (total unknown: None)."""

    phase: str = Field(description='"loading" | "tokenizing" | "hashing" | "comparing"')
    done: int = Field(0, ge=0, description="Records of this phase handled so far.")
    total: int | None = Field(None, ge=0, description="Records this phase handles in all.")


class AnalysisRead(BaseModel):
    """One analysis as the browser follows it: `progress` while running, `result` once `status` is done,
    `error` once failed."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    status: AnalysisStatus
    progress: AnalysisProgress | None = None
    result: dict[str, Any] | None = None
    error: str | None = None


class FixesRequest(BaseModel):
    """Which hygiene findings to drop; the kept records become the dataset's next version."""

    model_config = ConfigDict(extra="forbid")

    drop_exact_duplicates: bool = Field(False, description="Keep the first of each group of identical records.")
    drop_near_duplicates: bool = Field(False, description="Keep the first of each group of near-duplicates.")
    drop_conflicts: bool = Field(
        False, description="Drop every record of a prompt that has conflicting answers (which is right is unknown)."
    )
    drop_leaked: bool = Field(False, description="Drop records that also occur in the validation dataset.")
    # Which hygiene result to apply; left out, the most recent finished one of this dataset.
    validation_dataset_id: DbId | None = Field(None, description="The validation dataset the hygiene run used.")
    threshold: float | None = Field(None, ge=0.5, le=1.0, description="The near-duplicate threshold it used.")
