from typing import Annotated

from fastapi import APIRouter, File, Form, UploadFile

from backend.dataset import service
from backend.dataset.formats import ACCEPTED
from backend.dataset.schemas import DatasetInspect, DatasetList, DatasetPreview, DatasetRead
from backend.dataset.table import columns_of
from backend.deps import CurrentUser, SessionDep
from backend.schemas import IdPath, Text

router = APIRouter(prefix="/api/datasets", tags=["datasets"])


FileField = Annotated[UploadFile, File(description=f"Dataset file: {ACCEPTED}")]
OptionsField = Annotated[
    str,
    Form(
        max_length=10_000,
        description='JSON object, all keys optional: {"shape", "layout", "columns": {canonical: source}, '
        '"text_split": "file"|"paragraph"|"line", "quoting": "minimal"|"none", "delimiter"}',
    ),
]


@router.post("", response_model=DatasetRead, status_code=201)
def upload_dataset(
    session: SessionDep,
    user: CurrentUser,
    file: FileField,
    name: Annotated[Text, Form(max_length=200)] = "",
    options: OptionsField = "",
) -> DatasetRead:
    ds = service.create_dataset(
        session,
        user=user,
        source=file.file,
        filename=file.filename or "",
        name=name,
        options=service.options_from_form(options),
    )
    return DatasetRead.model_validate(ds)


@router.post("/inspect", response_model=DatasetInspect)
def inspect_dataset(
    user: CurrentUser,
    file: FileField,
    options: OptionsField = "",
    max_records: Annotated[int, Form(ge=0, description="Stop after this many records (0: the whole file).")] = 0,
) -> DatasetInspect:
    """Detect and validate a file without storing it (for the column-mapping step)."""
    filename = service.safe_filename(file.filename or "")
    summary = service.inspect_upload(
        source=file.file, filename=filename, options=service.options_from_form(options), max_records=max_records
    )
    return DatasetInspect.of(filename, summary)


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
    records = service.preview(ds, max(1, min(rows, 200)))
    return DatasetPreview(
        id=ds.id,
        format=ds.format,
        shape=ds.shape,
        record_count=ds.record_count,
        columns=columns_of(records),
        rows=records,
    )


@router.delete("/{dataset_id}", status_code=204)
def delete_dataset(dataset_id: IdPath, session: SessionDep, user: CurrentUser) -> None:
    service.delete_dataset(session, user=user, dataset_id=dataset_id)
