from fastapi import APIRouter, Request, Response
from sse_starlette import EventSourceResponse

from backend.auth.live import live_events
from backend.deps import CurrentUser, SessionDep
from backend.events import publish_export
from backend.export import service
from backend.export.schemas import ExportCreate, ExportList, ExportRead
from backend.export.stream import export_list_events
from backend.job.service import get_job
from backend.schemas import IdPath
from backend.work.kinds import EXPORT
from backend.work.send import send

router = APIRouter(prefix="/api", tags=["exports"])


@router.post("/jobs/{job_id}/exports", response_model=ExportRead, status_code=201)
def create_export(
    job_id: IdPath, body: ExportCreate, response: Response, session: SessionDep, user: CurrentUser
) -> ExportRead:
    """Package the job's final output or one checkpoint as a zip (adapter, merged or model, in a dtype). The same
    export already queued, running or done is returned instead (200)."""
    row, created = service.create_export(session, user=user, job_id=job_id, data=body)
    if not created:
        response.status_code = 200
        return service.to_read(row)
    session.commit()  # the worker must find the row when the task arrives
    send(EXPORT, row.id)  # if the broker is down, the row waits queued and the sweep sends it later
    publish_export(row.id)  # open lists show it queued without waiting for the worker
    return service.to_read(row)


@router.get("/jobs/{job_id}/exports", response_model=ExportList)
def list_exports(job_id: IdPath, session: SessionDep, user: CurrentUser) -> ExportList:
    """The job's exports, newest first."""
    get_job(session, user=user, job_id=job_id)
    return ExportList(items=[service.to_read(r) for r in service.list_exports(session, job_id)])


@router.get("/jobs/{job_id}/exports/stream")
def stream_exports(job_id: IdPath, request: Request, session: SessionDep, user: CurrentUser) -> EventSourceResponse:
    """SSE: an `exports` event with the list on connect and whenever one of them changes; `end` when none is
    queued or running (the page opens it again when it starts an export)."""
    get_job(session, user=user, job_id=job_id)
    session.close()  # an export can take minutes; don't hold a connection
    return live_events(request, export_list_events(job_id, request.app.state.broadcaster))


@router.get("/exports/{export_id}", response_model=ExportRead)
def get_export(export_id: IdPath, session: SessionDep, user: CurrentUser) -> ExportRead:
    return service.to_read(service.get_export(session, user=user, export_id=export_id))
