from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from backend.deps import OptionalUser, SessionDep
from backend.job.service import jobs_by_model
from backend.model import service
from backend.model.detail import model_detail
from backend.web import page_id, render, require

router = APIRouter(include_in_schema=False)


@router.get("/models", response_class=HTMLResponse)
def models_page(request: Request, session: SessionDep, user: OptionalUser) -> Response:
    user = require(user)
    models = service.list_models(session, user=user)
    return render(request, "model/list.html", user, models=models, used_by=jobs_by_model(session, user=user))


@router.get("/models/{model_id}", response_class=HTMLResponse)
def model_page(model_id: str, request: Request, session: SessionDep, user: OptionalUser) -> Response:
    user = require(user)
    number = page_id(model_id, "model")
    model = model_detail(session, user=user, model_id=number)
    owner = service.visible_model(session, user=user, model_id=number).owner_id
    return render(request, "model/detail.html", user, model=model, mine=user.is_admin or owner == user.id)
