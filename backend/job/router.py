from collections.abc import Sequence
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Query, Request, Response
from pydantic_core import to_json
from sse_starlette import EventSourceResponse

from backend.auth.live import live_events
from backend.deps import CurrentUser, SessionDep
from backend.events import publish
from backend.job import admission, compare, control, estimate, service
from backend.job.checkpoints import list_checkpoints
from backend.job.schemas import (
    ArtifactRead,
    CheckpointRead,
    CompareRead,
    EstimateRead,
    EventRead,
    JobClone,
    JobCreate,
    JobList,
    JobRead,
    JobResume,
    MetricRead,
    SampleRead,
)
from backend.job.stream import job_events, jobs_list_events, parse_cursor
from backend.schemas import MAX_ID, DbId, IdPath, Text
from backend.storage.responses import download

router = APIRouter(prefix="/api/jobs", tags=["jobs"])
JOBS_PAGE, MAX_JOBS_PAGE = 100, 500
METRICS_PAGE, MAX_METRICS_PAGE = 10_000, 100_000


@router.post("", response_model=JobRead, status_code=201)
def create_job(body: JobCreate, session: SessionDep, user: CurrentUser) -> JobRead:
    job = service.create_job(session, user=user, data=body)
    admission.admit(session, user, body, job)
    return admission.enqueue(session, job)


@router.post("/estimate", response_model=EstimateRead)
def estimate_job(body: JobCreate, session: SessionDep, user: CurrentUser) -> EstimateRead:
    """Parameters, tokens, steps, FLOPs, time and memory of a job before it is launched; nothing is stored."""
    return estimate.estimate_job(session, user=user, body=body)


@router.get("", response_model=JobList)
def list_jobs(
    session: SessionDep,
    user: CurrentUser,
    limit: Annotated[int, Query(ge=1, le=MAX_JOBS_PAGE)] = JOBS_PAGE,
    cursor: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
) -> Response:
    """Newest first, `limit` at a time; `cursor` (the last page's `next_cursor`) goes on to older jobs."""
    jobs = service.list_jobs(session, user=user, limit=limit, before=cursor)
    next_cursor = jobs[-1].id if len(jobs) == limit else None
    page = JobList(items=service.to_reads(session, jobs), next_cursor=next_cursor)
    # A Response: returned as a model, FastAPI would validate the page's hundreds of views a second time.
    return Response(page.model_dump_json(), media_type="application/json")


@router.get("/compare", response_model=CompareRead)
def compare_jobs(
    session: SessionDep, user: CurrentUser, ids: Annotated[list[DbId], Query(max_length=8)]
) -> CompareRead:
    """Runs side by side: curves on step / tokens / FLOPs / time axes, summaries and the settings that differ."""
    return compare.compare_jobs(session, user=user, job_ids=list(ids))


@router.get("/stream")
def stream_jobs(request: Request, session: SessionDep, user: CurrentUser) -> EventSourceResponse:
    """SSE for the jobs list: a `job` event per visible job (newest first) on connect, then one whenever a job
    changes or appears. A reconnect gets the snapshot again, so nothing is missed."""
    user_id, is_admin = user.id, user.is_admin
    session.close()  # a stream can last hours; don't hold a connection
    return live_events(request, jobs_list_events(user_id, is_admin, request.app.state.broadcaster))


@router.get("/{job_id}", response_model=JobRead)
def get_job(job_id: IdPath, session: SessionDep, user: CurrentUser) -> JobRead:
    return service.to_read(session, service.get_job(session, user=user, job_id=job_id))


@router.post("/{job_id}/cancel", response_model=JobRead)
def cancel_job(job_id: IdPath, session: SessionDep, user: CurrentUser) -> JobRead:
    job = service.cancel_job(session, user=user, job_id=job_id)
    session.commit()  # before the publish, so live readers see the change
    publish(job_id)
    return service.to_read(session, job)


@router.post("/{job_id}/pause", response_model=JobRead)
def pause_job(job_id: IdPath, session: SessionDep, user: CurrentUser) -> JobRead:
    """Save a checkpoint at the next step and stop; the job ends as `paused`."""
    job = control.pause_job(session, user=user, job_id=job_id)
    session.commit()
    publish(job_id)
    return service.to_read(session, job)


@router.post("/{job_id}/resume", response_model=JobRead)
def resume_job(job_id: IdPath, session: SessionDep, user: CurrentUser, body: JobResume | None = None) -> JobRead:
    """Continue a paused, failed or cancelled job from `body.checkpoint`, or its latest (409 without one);
    what came after that checkpoint's step is dropped."""
    checkpoint = body.checkpoint if body else None
    return admission.enqueue(session, control.resume_job(session, user=user, job_id=job_id, checkpoint=checkpoint))


@router.post("/{job_id}/clone", response_model=JobRead, status_code=201)
def clone_job(job_id: IdPath, session: SessionDep, user: CurrentUser, body: JobClone | None = None) -> JobRead:
    """A new job with the same inputs; `body` may rename it and override hyperparameters."""
    data = body or JobClone()
    job = control.clone_job(session, user=user, job_id=job_id, data=data)
    admission.admit(session, user, JobCreate.model_validate({**control.inputs_of(job), "force": data.force}), job)
    return admission.enqueue(session, job)


@router.get("/{job_id}/checkpoints", response_model=list[CheckpointRead])
def job_checkpoints(job_id: IdPath, session: SessionDep, user: CurrentUser) -> list[CheckpointRead]:
    service.get_job(session, user=user, job_id=job_id)
    return [
        CheckpointRead(name=c.name, step=c.step, size_bytes=c.size_bytes, created_at=c.created_at)
        for c in list_checkpoints(job_id)
    ]


@router.get("/{job_id}/samples", response_model=list[SampleRead])
def job_samples(job_id: IdPath, session: SessionDep, user: CurrentUser) -> list[SampleRead]:
    service.get_job(session, user=user, job_id=job_id)
    return [SampleRead.model_validate(s) for s in service.samples(session, job_id)]


@router.get("/{job_id}/metrics", response_model=list[MetricRead])
def job_metrics(
    job_id: IdPath,
    session: SessionDep,
    user: CurrentUser,
    resolution: Literal["chart", "full"] = "chart",
    after: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_METRICS_PAGE)] = METRICS_PAGE,
) -> Response:
    """Logged points, by step. `chart`: every point of a short run, else at most 2,000 per series keeping each
    bucket's lowest and highest. `full`: every point in the order written, `limit` after point id `after`; a full
    page links the next (Link: rel="next")."""
    service.get_job(session, user=user, job_id=job_id)
    headers = {}
    if resolution == "chart":
        points: Sequence[Any] = service.chart_metrics(session, job_id)
    else:
        points = service.metrics_after(session, job_id, after, limit)
        if len(points) == limit:
            url = f"/api/jobs/{job_id}/metrics?resolution=full&after={points[-1].id}&limit={limit}"
            headers["Link"] = f'<{url}>; rel="next"'
    # Serialized here, by pydantic's serializer without models: validating thousands of points as MetricRead
    # would cost more than reading them, and the json module takes several times longer.
    body = to_json([{"id": p.id, "step": p.step, "created_at": p.created_at, "values": p.values} for p in points])
    return Response(body, media_type="application/json", headers=headers)


@router.get("/{job_id}/events", response_model=list[EventRead])
def job_log(job_id: IdPath, session: SessionDep, user: CurrentUser) -> list[EventRead]:
    service.get_job(session, user=user, job_id=job_id)
    return [EventRead.model_validate(e) for e in service.events_after(session, job_id)]


@router.get("/{job_id}/stream")
def stream_job(
    job_id: IdPath,
    request: Request,
    session: SessionDep,
    user: CurrentUser,
    last_event_id: Annotated[str | None, Header()] = None,
    after: str | None = None,
) -> EventSourceResponse:
    """SSE: `metric`, `log` and `job` events, replayed after Last-Event-ID (or ?after=), then live."""
    service.get_job(session, user=user, job_id=job_id)
    session.close()  # a stream can last hours; don't hold a connection
    cursor = parse_cursor(last_event_id or after)
    return live_events(request, job_events(job_id, cursor, request.app.state.broadcaster))


@router.get("/{job_id}/artifacts", response_model=list[ArtifactRead])
def list_artifacts(job_id: IdPath, session: SessionDep, user: CurrentUser) -> list[ArtifactRead]:
    service.get_job(session, user=user, job_id=job_id)
    return [
        ArtifactRead.model_validate(a).model_copy(update={"url": f"/api/jobs/{job_id}/artifacts/{a.name}"})
        for a in service.artifacts(session, job_id)
    ]


@router.get("/{job_id}/artifacts/{name}")
def download_artifact(job_id: IdPath, name: Text, session: SessionDep, user: CurrentUser) -> Response:
    art = service.get_artifact(session, user=user, job_id=job_id, name=name)
    return download(art.path, filename=art.name, media_type="application/zip")
