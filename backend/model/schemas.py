from datetime import datetime

from pydantic import BaseModel, ConfigDict


class ModelRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    source: str
    revision: str | None = None
    status: str = "ready"
    error: str | None = None
    architecture: str
    parameters: int
    shared: bool
    job_id: int | None
    created_at: datetime


class ModelList(BaseModel):
    items: list[ModelRead]


class PresetRead(BaseModel):
    name: str
    parameters: int
    config: dict[str, int]
