from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from backend.deps import OptionalUser, SessionDep
from backend.job.service import jobs_by_model
from backend.model import service
from backend.web import render, require

router = APIRouter(include_in_schema=False)


@router.get("/models", response_class=HTMLResponse)
def models_page(request: Request, session: SessionDep, user: OptionalUser) -> Response:
    user = require(user)
    models = service.list_models(session, user=user)
    return render(request, "model/list.html", user, models=models, used_by=jobs_by_model(session, user=user))
