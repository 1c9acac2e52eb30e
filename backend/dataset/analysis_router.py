"""Dataset analyses over HTTP: token statistics, a dry-run render of one record, hygiene, and "apply fixes".

Statistics and hygiene answer at once with the analysis's current state; a render waits a little for the
worker, since one record is quick to compute. The browser asks once, then follows
`/api/datasets/analyses/{id}/stream` (progress, then the result) instead of asking again.
"""

from typing import Annotated

from anyio import to_thread
from fastapi import APIRouter, Query, Request, Response
from sse_starlette import EventSourceResponse

from backend.dataset import analysis, service
from backend.dataset.analysis_schemas import AnalysisRead, FixesRequest
from backend.dataset.analysis_stream import analysis_events
from backend.dataset.schemas import DatasetRead
from backend.deps import CurrentUser, SessionDep
from backend.method import registry
from backend.schemas import MAX_ID, IdPath

router = APIRouter(prefix="/api/datasets", tags=["dataset analysis"])

BaseModelQuery = Annotated[
    int, Query(ge=1, le=MAX_ID, description="Id of a base model (/api/models) whose tokenizer and template to use.")
]
ObjectiveQuery = Annotated[
    str | None,
    Query(
        max_length=32,
        description="One of " + ", ".join(registry.OBJECTIVES) + "; left out: the natural one for the dataset's shape.",
    ),
]
MaxLengthQuery = Annotated[int, Query(ge=8, le=32768, description="Tokens per sequence, as in the job.")]
RefreshQuery = Annotated[bool, Query(description="Compute again if the last attempt failed or stalled.")]


@router.get("/{dataset_id}/stats", response_model=AnalysisRead)
def dataset_stats(
    dataset_id: IdPath,
    session: SessionDep,
    user: CurrentUser,
    base_model: BaseModelQuery,
    objective: ObjectiveQuery = None,
    max_length: MaxLengthQuery = 256,
    batch_size: Annotated[int, Query(ge=1, le=4096, description="Sequences per optimizer step.")] = 8,
    refresh: RefreshQuery = False,
) -> AnalysisRead:
    ds = service.get_dataset(session, user=user, dataset_id=dataset_id)
    params = analysis.token_params(
        session, user=user, dataset=ds, base_model=base_model, objective=objective, max_length=max_length,
        batch_size=batch_size,
    )  # fmt: skip
    row = analysis.submit(session, dataset=ds, kind=analysis.STATS, params=params, refresh=refresh)
    return AnalysisRead.model_validate(row)


@router.get("/{dataset_id}/render", response_model=AnalysisRead, responses={202: {"model": AnalysisRead}})
async def dataset_render(
    dataset_id: IdPath,
    response: Response,
    session: SessionDep,
    user: CurrentUser,
    base_model: BaseModelQuery,
    index: Annotated[int, Query(ge=0, le=MAX_ID, description="Record number, counting from 0.")],
    objective: ObjectiveQuery = None,
    max_length: MaxLengthQuery = 256,
    wait: Annotated[float, Query(ge=0, le=30, description="Seconds to wait for the result.")] = 20.0,
    refresh: RefreshQuery = False,
) -> AnalysisRead:
    """200 with the result when it is ready within `wait` seconds, else 202 with the state so far."""

    def request() -> int:
        ds = service.get_dataset(session, user=user, dataset_id=dataset_id)
        params = analysis.token_params(
            session, user=user, dataset=ds, base_model=base_model, objective=objective, max_length=max_length,
            index=index,
        )  # fmt: skip
        return analysis.submit(session, dataset=ds, kind=analysis.RENDER, params=params, refresh=refresh).id

    state = await analysis.wait_for(await to_thread.run_sync(request), wait)
    response.status_code = 200 if state.status in analysis.FINISHED else 202
    return state


@router.get("/{dataset_id}/hygiene", response_model=AnalysisRead)
def dataset_hygiene(
    dataset_id: IdPath,
    session: SessionDep,
    user: CurrentUser,
    validation_dataset_id: Annotated[
        int | None, Query(ge=1, le=MAX_ID, description="A validation dataset to check for leakage.")
    ] = None,
    threshold: Annotated[
        float, Query(ge=0.5, le=1.0, description="Similarity (0.5-1) above which records are near-duplicates.")
    ] = analysis.DEFAULT_THRESHOLD,
    refresh: RefreshQuery = False,
) -> AnalysisRead:
    ds = service.get_dataset(session, user=user, dataset_id=dataset_id)
    params = analysis.hygiene_params(
        session, user=user, dataset=ds, validation_dataset_id=validation_dataset_id, threshold=threshold
    )
    row = analysis.submit(session, dataset=ds, kind=analysis.HYGIENE, params=params, refresh=refresh)
    return AnalysisRead.model_validate(row)


@router.post("/{dataset_id}/fixes", response_model=DatasetRead, status_code=201)
def apply_fixes(dataset_id: IdPath, body: FixesRequest, session: SessionDep, user: CurrentUser) -> DatasetRead:
    """Drop what the chosen fixes name (from the latest hygiene check); the rest is a new dataset version."""
    ds = service.get_dataset(session, user=user, dataset_id=dataset_id)
    return DatasetRead.model_validate(analysis.apply_fixes(session, user=user, dataset=ds, fixes=body))


@router.get("/analyses/{analysis_id}/stream")
def stream_analysis(
    analysis_id: IdPath, request: Request, session: SessionDep, user: CurrentUser
) -> EventSourceResponse:
    """SSE: an `analysis` event (status, progress, then the result or the error) on connect and on each change,
    `end` once it is done or failed. 404 for an analysis of someone else's dataset."""
    analysis.visible_analysis(session, user=user, analysis_id=analysis_id)
    session.close()  # an analysis of a large dataset takes minutes; don't hold a connection
    return EventSourceResponse(analysis_events(analysis_id, request.app.state.broadcaster), ping=15)
