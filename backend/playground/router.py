from typing import Annotated

from fastapi import APIRouter, Header, Request
from sse_starlette import EventSourceResponse

from backend.auth.live import live_events
from backend.deps import CurrentUser, SessionDep
from backend.playground import service
from backend.playground.schemas import GenerationCreate, GenerationList, GenerationRead
from backend.playground.stream import generation_events, parse_offset
from backend.schemas import DbId, IdPath
from backend.work.kinds import GENERATION
from backend.work.send import send

router = APIRouter(prefix="/api/generations", tags=["playground"])


@router.post("", response_model=GenerationRead, status_code=201)
def create_generation(body: GenerationCreate, session: SessionDep, user: CurrentUser) -> GenerationRead:
    """Queue a prompt for a worker: a base model (model_id) or a job's output or checkpoint (job_id)."""
    row = service.create_generation(session, user=user, data=body)
    session.commit()  # the worker must find the row when the task arrives
    send(GENERATION, row.id)  # if the broker is down, the row waits queued and the sweep sends it later
    return service.to_read(session, row)


@router.get("", response_model=GenerationList)
def list_generations(
    session: SessionDep, user: CurrentUser, job_id: DbId | None = None, model_id: DbId | None = None
) -> GenerationList:
    """Your recent generations, newest first."""
    rows = service.list_generations(session, user=user, job_id=job_id, model_id=model_id)
    return GenerationList(items=[service.to_read(session, r) for r in rows])


@router.get("/{generation_id}", response_model=GenerationRead)
def get_generation(generation_id: IdPath, session: SessionDep, user: CurrentUser) -> GenerationRead:
    return service.to_read(session, service.get_generation(session, user=user, generation_id=generation_id))


@router.get("/{generation_id}/stream")
def stream_generation(
    generation_id: IdPath,
    request: Request,
    session: SessionDep,
    user: CurrentUser,
    last_event_id: Annotated[str | None, Header()] = None,
    after: str | None = None,
) -> EventSourceResponse:
    """SSE: `status`, `token` (text delta; the id is the characters sent so far) and `end`; resumes after
    Last-Event-ID (or ?after=)."""
    service.get_generation(session, user=user, generation_id=generation_id)
    session.close()  # don't hold a connection while the answer streams
    offset = parse_offset(last_event_id or after)
    return live_events(request, generation_events(generation_id, offset, request.app.state.broadcaster))
