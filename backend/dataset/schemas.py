from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, computed_field

from backend.dataset.formats import LAYOUTS, Summary
from backend.dataset.table import table_of


class Problem(BaseModel):
    line: int | None = Field(None, description="Line of the file (row of a parquet file), 1-based.")
    field: str | None = Field(None, description="The field at fault, e.g. `messages[2].role`.")
    message: str
    code: str | None = Field(None, description="Warnings: duplicate, long_record, ends_on_user, ...")


class DatasetRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    filename: str
    size_bytes: int
    sha256: str
    format: str = Field(description="The file's layout: text, jsonl_text, alpaca, sharegpt, openai, ...")
    shape: str = Field(description="Canonical shape: text, prompt_completion, messages, preference, classification.")
    record_count: int
    confidence: float = Field(1.0, description="How sure the layout detection was (0-1).")
    warnings: list[Problem] = Field(default_factory=list, description="The first 50 warnings.")
    warning_count: int = 0
    columns: list[str] = Field(default_factory=list, description="Source columns/keys seen in the first records.")
    options: dict[str, Any] = Field(default_factory=dict, description="How the file is read (given and detected).")
    version: int = 1
    parent_id: int | None = None
    note: str = ""
    created_at: datetime

    @computed_field  # type: ignore[prop-decorator]
    @property
    def layout(self) -> str:
        return self.format


class DatasetList(BaseModel):
    items: list[DatasetRead]


class PreviewTable(BaseModel):
    """Records as text cells: every column any of them has (first-seen order), nested values as compact JSON."""

    columns: list[str]
    rows: list[list[str]]


class DatasetPreview(BaseModel):
    id: int
    format: str
    shape: str
    record_count: int
    columns: list[str] = Field(default_factory=list, description="Every key of these rows, in first-seen order.")
    rows: list[dict[str, Any]] = Field(description="Records differ in keys: an optional one is on some rows only.")


class DatasetInspect(BaseModel):
    """What a file holds and how it would be read, computed without storing anything."""

    file: str
    reader: str = Field(description="File type: text, json, jsonl, csv, parquet ('' when unreadable).")
    compressed: bool
    layout: str
    format: str
    shape: str
    confidence: float
    columns: list[str]
    options: dict[str, Any] = Field(description="Effective options; send them back with the upload.")
    record_count: int
    complete: bool = Field(description="False when only the first max_records records were read.")
    preview: list[dict[str, Any]] = Field(description="The first records in their canonical shape.")
    table: PreviewTable = Field(description="`preview` as text cells under the union of its keys (for display).")
    sample: list[dict[str, Any]] = Field(description="The first source rows, as they are in the file.")
    errors: list[Problem]
    error_count: int
    warnings: list[Problem]
    warning_count: int
    notes: list[str] = Field(
        default_factory=list,
        description="How detection decided (e.g. why a text file is split per line) and why confidence is below 1.",
    )
    layouts: dict[str, list[str]] = Field(
        default_factory=lambda: {name: list(layout.shapes) for name, layout in LAYOUTS.items()},
        description="Every layout, and the shapes it can be read as.",
    )

    @classmethod
    def of(cls, file: str, summary: Summary) -> "DatasetInspect":
        return cls(
            file=file,
            reader=summary.reader,
            compressed=summary.compressed,
            layout=summary.format,
            format=summary.format,
            shape=summary.shape,
            confidence=summary.confidence,
            columns=summary.columns,
            options=summary.options,
            record_count=summary.record_count,
            complete=summary.complete,
            preview=summary.preview,
            table=PreviewTable.model_validate(table_of(summary.preview), from_attributes=True),
            sample=summary.sample,
            errors=[Problem(**e) for e in summary.errors],
            error_count=summary.error_count,
            warnings=[Problem(**w) for w in summary.warnings],
            warning_count=summary.warning_count,
            notes=summary.notes,
        )
