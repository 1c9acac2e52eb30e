from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from backend.db import Job
from backend.deps import OptionalUser, SessionDep
from backend.job.service import get_job, list_jobs
from backend.model.service import list_models
from backend.web import page_id, render, require

router = APIRouter(include_in_schema=False)


def _job_option(job: Job) -> dict[str, object]:
    return {
        "id": job.id,
        "name": job.name,
        "kind": job.kind,
        "method": job.method,
        "objective": job.objective,
        "status": job.status,
        "base_model_id": job.base_model_id,
    }


@router.get("/playground", response_class=HTMLResponse)
def playground_page(
    request: Request, session: SessionDep, user: OptionalUser, job_id: str | None = None, model_id: str | None = None
) -> Response:
    user = require(user)
    # Deep links from the job and model pages; a mangled one is the friendly error page, not JSON.
    picked_job = page_id(job_id, "job") if job_id else None
    picked_model = page_id(model_id, "model") if model_id else None
    jobs = [j for j in list_jobs(session, user=user) if j.status == "succeeded"]
    if picked_job is not None and all(j.id != picked_job for j in jobs):
        # A deep link may name a job still running or stopped: its checkpoints can answer already.
        jobs.insert(0, get_job(session, user=user, job_id=picked_job))
    return render(
        request,
        "playground/index.html",
        user,
        models=[{"id": m.id, "name": m.name} for m in list_models(session, user=user) if m.status == "ready"],
        jobs=[_job_option(j) for j in jobs],
        selected_job_id=picked_job,
        selected_model_id=picked_model,  # a model page's "Try in the Playground" puts it on the left
    )
