"""Resumable chunked uploads (`/api/uploads`) and a dataset's versions. Scripts may keep the one-shot
multipart `POST /api/datasets`; the browser uses these for files of any size."""

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Request
from pydantic import BaseModel, ConfigDict, Field

from backend.dataset import upload as service
from backend.dataset.schemas import DatasetList, DatasetRead
from backend.dataset.service import get_dataset
from backend.dataset.versions import lineage
from backend.deps import CurrentUser, SessionDep
from backend.schemas import IdPath, Text

router = APIRouter(tags=["uploads"])

UploadId = Annotated[str, Path(pattern=r"^[0-9a-f]{32}$", description="Id from POST /api/uploads")]


class UploadCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    filename: Text = Field(min_length=1, max_length=255, description="The file's name; its extension picks the reader.")
    size: int = Field(ge=0, le=2**62, description="Total bytes the upload will carry.")
    name: Text = Field("", max_length=200, description="Dataset name; empty means the file name.")
    options: dict[str, Any] | None = Field(
        None, description="How to read the file: shape, layout, columns, text_split, quoting (as POST /api/datasets)."
    )


class UploadRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    filename: str
    name: str
    size_bytes: int
    received_bytes: int = Field(description="Bytes accepted so far: the offset the next chunk must start at.")
    chunk_size: int = Field(service.CHUNK_SIZE, description="Suggested chunk size in bytes.")
    created_at: datetime
    updated_at: datetime


@router.post("/api/uploads", response_model=UploadRead, status_code=201)
def create_upload(body: UploadCreate, session: SessionDep, user: CurrentUser) -> UploadRead:
    upload = service.create_upload(
        session, user=user, filename=body.filename, size=body.size, name=body.name, options=body.options
    )
    return UploadRead.model_validate(upload)


@router.get("/api/uploads/{upload_id}", response_model=UploadRead)
def get_upload(upload_id: UploadId, session: SessionDep, user: CurrentUser) -> UploadRead:
    return UploadRead.model_validate(service.get_upload(session, user=user, upload_id=upload_id))


@router.put("/api/uploads/{upload_id}", response_model=UploadRead)
async def put_chunk(
    upload_id: UploadId,
    request: Request,
    session: SessionDep,
    user: CurrentUser,
    content_range: Annotated[str, Header(description="bytes START-END/TOTAL (END inclusive)")],
) -> UploadRead:
    """Append the raw request body; it must start at `received_bytes`, else 409 with the current offset."""
    upload = await service.write_chunk(
        session, user=user, upload_id=upload_id, content_range=content_range, body=request.stream()
    )
    return UploadRead.model_validate(upload)


@router.post("/api/uploads/{upload_id}/complete", response_model=DatasetRead, status_code=201)
def complete_upload(upload_id: UploadId, session: SessionDep, user: CurrentUser) -> DatasetRead:
    """Validate the whole file and store it; a refused file ends the upload too (start a new one)."""
    return DatasetRead.model_validate(service.complete_upload(session, user=user, upload_id=upload_id))


@router.delete("/api/uploads/{upload_id}", status_code=204)
def delete_upload(upload_id: UploadId, session: SessionDep, user: CurrentUser) -> None:
    service.delete_upload(session, user=user, upload_id=upload_id)


@router.get("/api/datasets/{dataset_id}/versions", response_model=DatasetList, tags=["datasets"])
def dataset_versions(dataset_id: IdPath, session: SessionDep, user: CurrentUser) -> DatasetList:
    """Every version of the dataset's lineage (first upload, its edits and fixes), oldest first."""
    dataset = get_dataset(session, user=user, dataset_id=dataset_id)
    return DatasetList(items=[DatasetRead.model_validate(d) for d in lineage(session, dataset=dataset)])
