from fastapi import APIRouter

from backend.deps import CurrentUser, SessionDep
from backend.worker import service
from backend.worker.schemas import WorkerList

router = APIRouter(prefix="/api", tags=["workers"])


@router.get("/workers", response_model=WorkerList)
def list_workers(session: SessionDep, user: CurrentUser) -> WorkerList:
    """The training and analysis workers: device, memory, libraries, current job, and whether they are live."""
    return WorkerList(items=service.list_workers(session))
