from typing import Annotated

from fastapi import APIRouter, File, Form, Request, UploadFile
from sse_starlette import EventSourceResponse

from backend.auth.live import live_events
from backend.dataset.upload import CHUNK_SIZE
from backend.db import Model
from backend.deps import CurrentUser, SessionDep
from backend.errors import Invalid
from backend.model import detail, imports, service, upload
from backend.model.presets import PRESETS, parameter_count
from backend.model.schemas import (
    ModelDetail,
    ModelImport,
    ModelList,
    ModelRead,
    ModelUpdate,
    ModelUploadCreate,
    ModelUploadRead,
    PresetRead,
)
from backend.model.stream import model_events, models_list_events
from backend.schemas import IdPath, Text
from backend.work.kinds import IMPORT
from backend.work.send import send

router = APIRouter(prefix="/api", tags=["models"])

FileField = Annotated[UploadFile | None, File(description=f"Model file: {upload.ACCEPTED}")]
UploadIdField = Annotated[
    str, Form(pattern=r"^([0-9a-f]{32})?$", description="Instead of `file`: a finished POST /api/models/uploads")
]


def _read(session: SessionDep, model: Model) -> ModelRead:
    """Commit, then (for an import) send the worker task: the worker must find the row when it arrives."""
    session.commit()
    if model.status == "importing":
        send(IMPORT, model.id)  # if the broker is down, the import waits and the sweep sends it later
    return ModelRead.model_validate(model)


@router.get("/models", response_model=ModelList)
def list_models(session: SessionDep, user: CurrentUser) -> ModelList:
    return ModelList(items=[ModelRead.model_validate(m) for m in service.list_models(session, user=user)])


@router.post("/models", response_model=ModelRead, status_code=201)
def upload_model(
    session: SessionDep,
    user: CurrentUser,
    file: FileField = None,
    upload_id: UploadIdField = "",
    name: Annotated[Text, Form(max_length=200)] = "",
) -> ModelRead:
    """A zip of a Hugging Face directory (ready at once) or a .gguf (status "importing" until a worker has
    de-quantized it to safetensors). Send the file, or the id of a finished chunked upload."""
    if (file is None) == (not upload_id):
        raise Invalid("send either a file or an upload_id", field="file")
    if upload_id:
        model = upload.complete_upload(session, user=user, upload_id=upload_id, name=name)
    else:
        assert file is not None
        model = upload.import_stream(session, user=user, source=file.file, filename=file.filename or "", name=name)
    return _read(session, model)


@router.post("/models/uploads", response_model=ModelUploadRead, status_code=201)
def start_model_upload(body: ModelUploadCreate, session: SessionDep, user: CurrentUser) -> ModelUploadRead:
    """Start a chunked upload: PUT the chunks to /api/uploads/{id}, then POST /api/models with `upload_id`."""
    started = upload.start_upload(session, user=user, filename=body.filename, size=body.size, name=body.name)
    return ModelUploadRead(
        id=started.id,
        filename=started.filename,
        size_bytes=started.size_bytes,
        received_bytes=started.received_bytes,
        chunk_size=CHUNK_SIZE,
    )


@router.post("/models/import", response_model=ModelRead, status_code=201)
def import_from_hub(body: ModelImport, session: SessionDep, user: CurrentUser) -> ModelRead:
    """Download `hub_id` at `revision` on a worker (safetensors, configs and tokenizer files only)."""
    model = imports.create_hub_import(session, user=user, hub_id=body.hub_id, revision=body.revision, name=body.name)
    return _read(session, model)


@router.get("/models/stream")
def stream_models(request: Request, session: SessionDep, user: CurrentUser) -> EventSourceResponse:
    """SSE for the models list: a `models` event with every model you may use on connect (a reconnect gets it
    again), then a `model` event per model that appears or changes (import progress included) and `removed`
    per model deleted."""
    user_id = user.id
    session.close()  # a stream can last hours; don't hold a connection
    return live_events(request, models_list_events(user_id, request.app.state.broadcaster))


@router.get("/models/{model_id}", response_model=ModelRead)
def get_model(model_id: IdPath, session: SessionDep, user: CurrentUser) -> ModelRead:
    return ModelRead.model_validate(service.visible_model(session, user=user, model_id=model_id))


@router.get("/models/{model_id}/detail", response_model=ModelDetail)
def get_model_detail(model_id: IdPath, session: SessionDep, user: CurrentUser) -> ModelDetail:
    """The model with its files, size on disk, config summary, import progress and the jobs that used it."""
    return detail.model_detail(session, user=user, model_id=model_id)


@router.get("/models/{model_id}/stream")
def stream_model(model_id: IdPath, request: Request, session: SessionDep, user: CurrentUser) -> EventSourceResponse:
    """SSE: `model` events (status and import progress) on connect and on each change, `end` when it is over."""
    service.visible_model(session, user=user, model_id=model_id)
    session.close()  # an import can take long; don't hold a connection
    return live_events(request, model_events(model_id, request.app.state.broadcaster))


@router.patch("/models/{model_id}", response_model=ModelRead)
def update_model(model_id: IdPath, body: ModelUpdate, session: SessionDep, user: CurrentUser) -> ModelRead:
    """Rename; `trust_remote_code` is for admins only (403 otherwise)."""
    model = service.update_model(
        session, user=user, model_id=model_id, name=body.name, trust_remote_code=body.trust_remote_code
    )
    return ModelRead.model_validate(model)


@router.delete("/models/{model_id}", status_code=204)
def delete_model(model_id: IdPath, session: SessionDep, user: CurrentUser) -> None:
    """Remove a model no job uses (409 otherwise), with the files the studio stored for it."""
    service.delete_model(session, user=user, model_id=model_id)


@router.get("/architectures", response_model=list[PresetRead])
def list_architectures(user: CurrentUser) -> list[PresetRead]:
    """Presets a pretrain job can start from, with their parameter counts."""
    return [PresetRead(name=k, parameters=parameter_count(v), config=v) for k, v in PRESETS.items()]
