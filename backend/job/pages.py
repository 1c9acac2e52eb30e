from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from backend.dataset.service import list_datasets
from backend.db import Dataset, Model
from backend.deps import OptionalUser, SessionDep
from backend.job import service
from backend.job.checkpoints import latest_checkpoint
from backend.job.progress import planned_steps
from backend.job.schemas import HYPERPARAMETER_PRESETS, Hyperparameters
from backend.method import registry
from backend.model.presets import PRESETS, parameter_count
from backend.model.service import list_models
from backend.web import page_id, render, require

router = APIRouter(include_in_schema=False)


@router.get("/")
def home() -> Response:
    return RedirectResponse("/jobs", status_code=303)


@router.get("/jobs", response_class=HTMLResponse)
def jobs_page(request: Request, session: SessionDep, user: OptionalUser) -> Response:
    user = require(user)
    jobs = service.to_reads(session, service.list_jobs(session, user=user))
    return render(request, "job/list.html", user, jobs=jobs)


@router.get("/jobs/new", response_class=HTMLResponse)
def new_job_page(
    request: Request, session: SessionDep, user: OptionalUser, clone: Annotated[str | None, Query()] = None
) -> Response:
    user = require(user)
    # "Clone and edit": the form opens filled with the source job's inputs (404 if the user may not see it).
    source_job = service.get_job(session, user=user, job_id=page_id(clone, "job")) if clone else None
    source = service.to_read(session, source_job) if source_job else None
    return render(
        request,
        "job/new.html",
        user,
        clone=source.model_dump(mode="json") if source else None,
        hp_presets=HYPERPARAMETER_PRESETS,
        datasets=list_datasets(session, user=user),
        # Only models whose weights are ready: an upload or hub import may still be converting.
        models=[m for m in list_models(session, user=user) if m.status == "ready"],
        presets={name: parameter_count(cfg) for name, cfg in PRESETS.items()},
        hyperparameter_schema=Hyperparameters.model_json_schema(),
        # The method and objective choices, their help and their settings' fields all render from the registry.
        methods=registry.catalog(),
        default_method=registry.default_method("finetune"),
    )


@router.get("/compare", response_class=HTMLResponse)
def compare_page(
    request: Request, session: SessionDep, user: OptionalUser, ids: Annotated[list[str] | None, Query()] = None
) -> Response:
    user = require(user)
    picked = [page_id(raw, "job") for raw in ids or []]
    jobs = service.list_jobs(session, user=user)
    return render(request, "job/compare.html", user, jobs=jobs, selected=list(dict.fromkeys(picked))[:8])


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_page(job_id: str, request: Request, session: SessionDep, user: OptionalUser) -> Response:
    user = require(user)
    job = service.get_job(session, user=user, job_id=page_id(job_id, "job"))
    base_model = session.get(Model, job.base_model_id) if job.base_model_id else None
    return render(
        request,
        "job/detail.html",
        user,
        job=service.to_read(session, job),
        dataset=session.get(Dataset, job.dataset_id),
        base_model=base_model,
        # A queued job shows "0 / N", not "0 / ?"; Resume is offered only with a checkpoint to resume from.
        planned_steps=planned_steps(session, job),
        has_checkpoint=latest_checkpoint(job.id) is not None,
        # The Export panel offers what the method's output can become (an adapter that cannot merge says why).
        export_method=registry.method(job.method),
    )
