"""The OpenAI-compatible API under /v1: files, fine-tuning jobs, models, chat completions and completions, for
the official `openai` SDK pointed at the studio (`base_url=<studio>/v1`, `api_key=<studio token>`)."""

from typing import Annotated, Any, Literal

from anyio import to_thread
from fastapi import APIRouter, Depends, File, Form, Query, Request, UploadFile
from fastapi.responses import Response, StreamingResponse
from starlette.responses import JSONResponse

from backend.db import Generation
from backend.deps import CurrentUser, SessionDep
from backend.events import publish
from backend.job import admission
from backend.openai_compat import files, ids, inference, jobs, models, schemas, streaming, views
from backend.openai_compat.errors import NO_RETRY, OpenAIRoute, error_response
from backend.storage.responses import download
from backend.work.kinds import GENERATION
from backend.work.send import send

router = APIRouter(prefix="/v1", tags=["openai"], route_class=OpenAIRoute)
# How long a non-streamed answer is waited for (a streamed one shows its progress instead).
WAIT_SECONDS = 300.0
Limit = Annotated[int, Query(ge=1, le=100)]


@router.post("/files")
def create_file(
    session: SessionDep, user: CurrentUser, file: Annotated[UploadFile, File()], purpose: Annotated[str, Form()]
) -> dict[str, Any]:
    """Upload a training file (purpose `fine-tune`): kept as a studio dataset once it validates."""
    ds = files.create_file(session, user=user, source=file.file, filename=file.filename or "", purpose=purpose)
    return files.file_view(ds)


@router.get("/files")
def list_files(
    session: SessionDep,
    user: CurrentUser,
    purpose: str | None = None,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 10_000,
    order: Literal["asc", "desc"] = "desc",
) -> dict[str, Any]:
    return files.list_files(session, user=user, purpose=purpose, after=after, limit=limit, order=order)


@router.get("/files/{file_id}")
def get_file(file_id: str, session: SessionDep, user: CurrentUser) -> dict[str, Any]:
    if (job_id := ids.parse_file(file_id, param="file_id").results_of) is not None:
        return files.results_view(session, user=user, file_id=file_id, job_id=job_id)
    return files.file_view(files.get_file(session, user=user, file_id=file_id))


@router.get("/files/{file_id}/content")
def file_content(file_id: str, session: SessionDep, user: CurrentUser) -> Response:
    if (job_id := ids.parse_file(file_id, param="file_id").results_of) is not None:
        rows = files.results_content(session, user=user, file_id=file_id, job_id=job_id)
        return StreamingResponse(rows, media_type="text/csv")
    ds = files.get_file(session, user=user, file_id=file_id)
    return download(ds.path, filename=ds.filename, media_type="application/octet-stream")


@router.delete("/files/{file_id}")
def delete_file(file_id: str, session: SessionDep, user: CurrentUser) -> dict[str, Any]:
    return files.delete_file(session, user=user, file_id=file_id)


@router.post("/fine_tuning/jobs")
def create_job(body: schemas.JobCreate, session: SessionDep, user: CurrentUser) -> dict[str, Any]:
    """An ordinary studio fine-tune (LoRA; sft or dpo), admitted and queued as POST /api/jobs does."""
    job = jobs.create_job(session, user=user, body=body)
    admission.enqueue(session, job)
    return views.job_view(session, job)


@router.get("/fine_tuning/jobs")
def list_jobs(
    request: Request, session: SessionDep, user: CurrentUser, after: str | None = None, limit: Limit = 20
) -> dict[str, Any]:
    """Newest first; `metadata[key]=value` filters on a job's metadata."""
    metadata = {k[9:-1]: v for k, v in request.query_params.items() if k.startswith("metadata[") and k.endswith("]")}
    found, more = jobs.list_jobs(session, user=user, after=after, limit=limit, metadata=metadata)
    return {"object": "list", "data": [views.job_view(session, j) for j in found], "has_more": more}


@router.get("/fine_tuning/jobs/{fine_tuning_job_id}")
def get_job(fine_tuning_job_id: str, session: SessionDep, user: CurrentUser) -> dict[str, Any]:
    return views.job_view(session, jobs.find_job(session, user=user, value=fine_tuning_job_id))


@router.post("/fine_tuning/jobs/{fine_tuning_job_id}/cancel")
def cancel_job(fine_tuning_job_id: str, session: SessionDep, user: CurrentUser) -> dict[str, Any]:
    job = jobs.cancel(session, user=user, value=fine_tuning_job_id)
    session.commit()  # before the publish, so live readers see the change
    publish(job.id)
    return views.job_view(session, job)


@router.post("/fine_tuning/jobs/{fine_tuning_job_id}/pause")
def pause_job(fine_tuning_job_id: str, session: SessionDep, user: CurrentUser) -> dict[str, Any]:
    """A checkpoint at the next step, then `paused`."""
    job = jobs.pause(session, user=user, value=fine_tuning_job_id)
    session.commit()
    publish(job.id)
    return views.job_view(session, job)


@router.post("/fine_tuning/jobs/{fine_tuning_job_id}/resume")
def resume_job(fine_tuning_job_id: str, session: SessionDep, user: CurrentUser) -> dict[str, Any]:
    """On from the latest checkpoint (a paused, failed or cancelled job)."""
    job = jobs.resume(session, user=user, value=fine_tuning_job_id)
    admission.enqueue(session, job)
    return views.job_view(session, job)


@router.get("/fine_tuning/jobs/{fine_tuning_job_id}/events")
def job_events(
    fine_tuning_job_id: str, session: SessionDep, user: CurrentUser, after: str | None = None, limit: Limit = 20
) -> dict[str, Any]:
    """Log lines (`message`) and logged points (`metrics`), newest first."""
    job = jobs.find_job(session, user=user, value=fine_tuning_job_id)
    return views.events_page(session, job, after=after, limit=limit)


@router.get("/fine_tuning/jobs/{fine_tuning_job_id}/checkpoints")
def job_checkpoints(
    fine_tuning_job_id: str, session: SessionDep, user: CurrentUser, after: str | None = None, limit: Limit = 10
) -> dict[str, Any]:
    job = jobs.find_job(session, user=user, value=fine_tuning_job_id)
    return views.checkpoints_page(session, job, after=after, limit=limit)


@router.get("/models")
def list_models(session: SessionDep, user: CurrentUser) -> dict[str, Any]:
    return models.list_models(session, user=user)


@router.get("/models/{model:path}")
def get_model(model: str, session: SessionDep, user: CurrentUser) -> dict[str, Any]:
    return models.get_model(session, user=user, value=model)


@router.delete("/models/{model:path}")
def delete_model(model: str, session: SessionDep, user: CurrentUser) -> dict[str, Any]:
    return models.delete_model(session, user=user, value=model)


def _queued(session: SessionDep, row: Generation) -> Generation:
    session.commit()  # the worker must find the row when the task arrives
    send(GENERATION, row.id)  # a down broker: the row waits and the sweep sends it later
    return streaming.snapshot(row.id)


def _chat(body: schemas.ChatCompletionCreate, session: SessionDep, user: CurrentUser) -> Generation:
    """Queued in a dependency: it runs in a worker thread, and the async route only waits."""
    return _queued(session, inference.create_chat(session, user=user, body=body))


def _completion(body: schemas.CompletionCreate, session: SessionDep, user: CurrentUser) -> Generation:
    return _queued(session, inference.create_completion(session, user=user, body=body))


async def _answer(request: Request, row: Generation, body: schemas.SamplingParams, *, chat: bool) -> Response:
    broadcaster = request.app.state.broadcaster
    if body.stream:
        usage = bool((body.stream_options or {}).get("include_usage"))
        chunks = streaming.stream(row, model=body.model, chat=chat, include_usage=usage, broadcaster=broadcaster)
        return StreamingResponse(chunks, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
    final = await streaming.finished(row.id, broadcaster, timeout=WAIT_SECONDS, gone=request.is_disconnected)
    if final is None:  # too long, or the client left: the worker stops rather than answer nobody
        message = f"no answer within {WAIT_SECONDS:.0f} s (the inference workers are busy or slow); it was stopped"
        await to_thread.run_sync(streaming.give_up, row.id, message)
        return error_response(message, status=504, code="timeout", headers=NO_RETRY)
    if final.status != "done":
        # The model's failure (it did not load, a bad checkpoint): asking again would fail the same way.
        return error_response(final.error or "the generation failed", status=500, headers=NO_RETRY)
    view = inference.chat_completion(final, body.model) if chat else inference.text_completion(final, body.model)
    return JSONResponse(view)


@router.post("/chat/completions")
async def chat_completions(
    request: Request, body: schemas.ChatCompletionCreate, row: Annotated[Generation, Depends(_chat)]
) -> Response:
    """An answer to the conversation by a base model or a fine-tuned one (or one of its checkpoints)."""
    return await _answer(request, row, body, chat=True)


@router.post("/completions")
async def completions(
    request: Request, body: schemas.CompletionCreate, row: Annotated[Generation, Depends(_completion)]
) -> Response:
    """The prompt continued as raw text."""
    return await _answer(request, row, body, chat=False)


@router.api_route("/{path:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"], include_in_schema=False)
def unknown(path: str) -> Response:
    """Any other address under /v1: OpenAI's 404, not the studio's error page."""
    return error_response(f"Unknown request URL: /v1/{path}", status=404, code="unknown_url")
