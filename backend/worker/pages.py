from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from sqlalchemy import func, select

from backend.db import Job
from backend.deps import OptionalUser, SessionDep
from backend.web import render, require
from backend.worker import service

router = APIRouter(include_in_schema=False)


@router.get("/workers", response_class=HTMLResponse)
def workers_page(request: Request, session: SessionDep, user: OptionalUser) -> Response:
    user = require(user)
    queued = session.scalar(select(func.count()).select_from(Job).where(Job.status == "queued")) or 0
    return render(request, "worker/list.html", user, workers=service.list_workers(session), queued=queued)
