"""Dataset analyses over HTTP: token statistics, a dry-run render of one record, hygiene, and "apply fixes".

Asking for an analysis changes state (a row, work on the analysis queue), so it is a POST; a GET with the same
parameters only reads what exists (404 until someone asked). A cross-site link or a prefetch therefore never
queues work. Statistics and hygiene answer at once with the analysis's current state; a render waits a little
for the worker, since one record is quick to compute. The browser asks once, then follows
`/api/datasets/analyses/{id}/stream` (progress, then the result) instead of asking again.
"""

from dataclasses import dataclass
from typing import Annotated, Any

from anyio import to_thread
from fastapi import APIRouter, Depends, Query, Request, Response
from sse_starlette import EventSourceResponse

from backend.auth.live import live_events
from backend.dataset import analysis, service
from backend.dataset.analysis_schemas import AnalysisRead, FixesRequest
from backend.dataset.analysis_stream import analysis_events
from backend.dataset.schemas import DatasetRead
from backend.db import Dataset
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
NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"description": "Nothing computed for these settings yet: POST the same parameters to ask."}
}


@dataclass
class Asked:
    """A dataset and the validated parameters of one analysis of it (the same for reading and for asking)."""

    dataset: Dataset
    params: dict[str, Any]


def stats_params(
    dataset_id: IdPath,
    session: SessionDep,
    user: CurrentUser,
    base_model: BaseModelQuery,
    objective: ObjectiveQuery = None,
    max_length: MaxLengthQuery = 256,
    batch_size: Annotated[int, Query(ge=1, le=4096, description="Sequences per optimizer step.")] = 8,
) -> Asked:
    ds = service.get_dataset(session, user=user, dataset_id=dataset_id)
    params = analysis.token_params(
        session, user=user, dataset=ds, base_model=base_model, objective=objective, max_length=max_length,
        batch_size=batch_size,
    )  # fmt: skip
    return Asked(ds, params)


def render_params(
    dataset_id: IdPath,
    session: SessionDep,
    user: CurrentUser,
    base_model: BaseModelQuery,
    index: Annotated[int, Query(ge=0, le=MAX_ID, description="Record number, counting from 0.")],
    objective: ObjectiveQuery = None,
    max_length: MaxLengthQuery = 256,
) -> Asked:
    ds = service.get_dataset(session, user=user, dataset_id=dataset_id)
    params = analysis.token_params(
        session, user=user, dataset=ds, base_model=base_model, objective=objective, max_length=max_length,
        index=index,
    )  # fmt: skip
    return Asked(ds, params)


def hygiene_params(
    dataset_id: IdPath,
    session: SessionDep,
    user: CurrentUser,
    validation_dataset_id: Annotated[
        int | None, Query(ge=1, le=MAX_ID, description="A validation dataset to check for leakage.")
    ] = None,
    threshold: Annotated[
        float, Query(ge=0.5, le=1.0, description="Similarity (0.5-1) above which records are near-duplicates.")
    ] = analysis.DEFAULT_THRESHOLD,
) -> Asked:
    ds = service.get_dataset(session, user=user, dataset_id=dataset_id)
    params = analysis.hygiene_params(
        session, user=user, dataset=ds, validation_dataset_id=validation_dataset_id, threshold=threshold
    )
    return Asked(ds, params)


StatsAsked = Annotated[Asked, Depends(stats_params)]
RenderAsked = Annotated[Asked, Depends(render_params)]
HygieneAsked = Annotated[Asked, Depends(hygiene_params)]


@router.get("/{dataset_id}/stats", response_model=AnalysisRead, responses=NOT_FOUND)
def read_stats(asked: StatsAsked, session: SessionDep) -> AnalysisRead:
    """The statistics computed (or being computed) for these settings; 404 when none were asked for."""
    row = analysis.existing(session, dataset=asked.dataset, kind=analysis.STATS, params=asked.params)
    return AnalysisRead.model_validate(row)


@router.post("/{dataset_id}/stats", response_model=AnalysisRead)
def compute_stats(asked: StatsAsked, session: SessionDep, refresh: RefreshQuery = False) -> AnalysisRead:
    """Queue the statistics for these settings, or return the ones already queued or done."""
    row = analysis.submit(session, dataset=asked.dataset, kind=analysis.STATS, params=asked.params, refresh=refresh)
    return AnalysisRead.model_validate(row)


@router.get("/{dataset_id}/render", response_model=AnalysisRead, responses=NOT_FOUND)
def read_render(asked: RenderAsked, session: SessionDep) -> AnalysisRead:
    """The dry-run render of this record for these settings; 404 when none was asked for."""
    row = analysis.existing(session, dataset=asked.dataset, kind=analysis.RENDER, params=asked.params)
    return AnalysisRead.model_validate(row)


@router.post("/{dataset_id}/render", response_model=AnalysisRead, responses={202: {"model": AnalysisRead}})
async def compute_render(
    asked: RenderAsked,
    response: Response,
    session: SessionDep,
    wait: Annotated[float, Query(ge=0, le=30, description="Seconds to wait for the result.")] = 20.0,
    refresh: RefreshQuery = False,
) -> AnalysisRead:
    """200 with the result when it is ready within `wait` seconds, else 202 with the state so far."""

    def request() -> int:
        kind = analysis.RENDER
        return analysis.submit(session, dataset=asked.dataset, kind=kind, params=asked.params, refresh=refresh).id

    state = await analysis.wait_for(await to_thread.run_sync(request), wait)
    response.status_code = 200 if state.status in analysis.FINISHED else 202
    return state


@router.get("/{dataset_id}/hygiene", response_model=AnalysisRead, responses=NOT_FOUND)
def read_hygiene(asked: HygieneAsked, session: SessionDep) -> AnalysisRead:
    """The hygiene check for these settings; 404 when none was asked for."""
    row = analysis.existing(session, dataset=asked.dataset, kind=analysis.HYGIENE, params=asked.params)
    return AnalysisRead.model_validate(row)


@router.post("/{dataset_id}/hygiene", response_model=AnalysisRead)
def compute_hygiene(asked: HygieneAsked, session: SessionDep, refresh: RefreshQuery = False) -> AnalysisRead:
    """Queue a hygiene check for these settings, or return the one already queued or done."""
    row = analysis.submit(session, dataset=asked.dataset, kind=analysis.HYGIENE, params=asked.params, refresh=refresh)
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
    return live_events(request, analysis_events(analysis_id, request.app.state.broadcaster))
