from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from backend.deps import OptionalUser, SessionDep
from backend.web import render, require
from backend.worker import service

router = APIRouter(include_in_schema=False)


@router.get("/workers", response_class=HTMLResponse)
def workers_page(request: Request, session: SessionDep, user: OptionalUser) -> Response:
    user = require(user)
    state = service.live_state(session, service.Viewer.of(user))
    return render(request, "worker/list.html", user, workers=state.items, queued=state.queued, now=state.now)
