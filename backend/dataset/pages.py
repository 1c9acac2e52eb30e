from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from backend.dataset import service
from backend.dataset.table import table_of
from backend.dataset.versions import lineage
from backend.db import Dataset
from backend.deps import OptionalUser, SessionDep
from backend.job.service import jobs_using
from backend.method import registry
from backend.model.service import list_models
from backend.web import page_id, render, require

router = APIRouter(include_in_schema=False)

PREVIEW_ROWS = 20


@router.get("/datasets", response_class=HTMLResponse)
def datasets_page(request: Request, session: SessionDep, user: OptionalUser) -> Response:
    user = require(user)
    return render(request, "dataset/list.html", user, datasets=service.list_datasets(session, user=user))


@router.get("/datasets/{dataset_id}", response_class=HTMLResponse)
def dataset_page(dataset_id: str, request: Request, session: SessionDep, user: OptionalUser) -> Response:
    user = require(user)
    ds = service.get_dataset(session, user=user, dataset_id=page_id(dataset_id, "dataset"))
    models = list_models(session, user=user)
    chat = service.chat_models(models)
    return render(
        request,
        "dataset/detail.html",
        user,
        dataset=ds,
        table=table_of(service.preview(ds, PREVIEW_ROWS)),
        versions=lineage(session, dataset=ds),
        parent=session.get(Dataset, ds.parent_id) if ds.parent_id else None,
        models=models,
        chat_models=chat,
        default_model=service.dry_run_model(models, shape=ds.shape, chat=chat),
        # The dry run takes the objectives a job on this data could train, the natural one first.
        objectives=[o for o in registry.OBJECTIVES.values() if ds.shape in o.shapes],
        default_objective=registry.default_objective(ds.shape),
        others=[d for d in service.list_datasets(session, user=user) if d.id != ds.id],
        used_by=jobs_using(session, user=user, dataset_id=ds.id),
    )
