from typing import Annotated

from fastapi import APIRouter, File, Form, UploadFile

from backend.dataset import service
from backend.dataset.schemas import DatasetList, DatasetPreview, DatasetRead
from backend.deps import CurrentUser, SessionDep
from backend.schemas import IdPath, Text

router = APIRouter(prefix="/api/datasets", tags=["datasets"])


@router.post("", response_model=DatasetRead, status_code=201)
def upload_dataset(
    session: SessionDep,
    user: CurrentUser,
    file: Annotated[UploadFile, File(description="Dataset file: .txt, .jsonl or .json")],
    name: Annotated[Text, Form(max_length=200)] = "",
) -> DatasetRead:
    ds = service.create_dataset(session, user=user, source=file.file, filename=file.filename or "", name=name)
    return DatasetRead.model_validate(ds)


@router.get("", response_model=DatasetList)
def list_datasets(session: SessionDep, user: CurrentUser) -> DatasetList:
    items = service.list_datasets(session, user=user)
    return DatasetList(items=[DatasetRead.model_validate(d) for d in items])


@router.get("/{dataset_id}", response_model=DatasetRead)
def get_dataset(dataset_id: IdPath, session: SessionDep, user: CurrentUser) -> DatasetRead:
    return DatasetRead.model_validate(service.get_dataset(session, user=user, dataset_id=dataset_id))


@router.get("/{dataset_id}/preview", response_model=DatasetPreview)
def preview_dataset(dataset_id: IdPath, session: SessionDep, user: CurrentUser, rows: int = 20) -> DatasetPreview:
    ds = service.get_dataset(session, user=user, dataset_id=dataset_id)
    return DatasetPreview(
        id=ds.id,
        format=ds.format,
        shape=ds.shape,
        record_count=ds.record_count,
        rows=service.preview(ds, max(1, min(rows, 200))),
    )


@router.delete("/{dataset_id}", status_code=204)
def delete_dataset(dataset_id: IdPath, session: SessionDep, user: CurrentUser) -> None:
    service.delete_dataset(session, user=user, dataset_id=dataset_id)
