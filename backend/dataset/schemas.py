from datetime import datetime

from pydantic import BaseModel, ConfigDict


class DatasetRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    filename: str
    size_bytes: int
    sha256: str
    format: str
    shape: str
    record_count: int
    created_at: datetime


class DatasetList(BaseModel):
    items: list[DatasetRead]


class DatasetPreview(BaseModel):
    id: int
    format: str
    shape: str
    record_count: int
    rows: list[dict[str, str]]
