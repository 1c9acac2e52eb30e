from fastapi import APIRouter, Request
from sse_starlette import EventSourceResponse

from backend.auth.live import live_events
from backend.deps import CurrentUser, SessionDep
from backend.worker import service
from backend.worker.schemas import WorkerList
from backend.worker.stream import workers_events

router = APIRouter(prefix="/api", tags=["workers"])


@router.get("/workers", response_model=WorkerList)
def list_workers(session: SessionDep, user: CurrentUser) -> WorkerList:
    """The training and analysis workers: device, memory, libraries, current job, and whether they are live.
    Non-admins see their own current jobs only, and no hostname or pid."""
    return WorkerList(items=service.list_workers(session, service.Viewer.of(user)))


@router.get("/workers/stream")
def stream_workers(request: Request, session: SessionDep, user: CurrentUser) -> EventSourceResponse:
    """SSE: a `workers` event (every worker with `live`, the queue depth and the server's clock) on connect and
    whenever a worker reports, goes silent, or a job is queued or taken; each worker as GET /api/workers shows it."""
    viewer = service.Viewer.of(user)
    session.close()  # a stream can last hours; don't hold a connection
    return live_events(request, workers_events(request.app.state.broadcaster, viewer))
