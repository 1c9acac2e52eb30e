"""The Methods view: one dataset and base model trained with several methods, their costs and results side by side
(trainable share against the registry's typical one, memory, time, throughput, final evaluation, output size)."""

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, Response

from backend.dataset.service import list_datasets
from backend.deps import OptionalUser, SessionDep
from backend.errors import Invalid
from backend.job.compare import MAX_RUNS
from backend.job.service import get_job
from backend.method.service import finetune_objective, method_choices, shared_settings
from backend.model.service import list_models
from backend.web import page_id, render, require

router = APIRouter(include_in_schema=False)


def parse_ids(raw: str | None) -> list[int]:
    """The runs of a results view, `ids=3,4,5` (repeats dropped, order kept)."""
    if not raw:
        return []
    ids = list(dict.fromkeys(page_id(part.strip(), "job") for part in raw.split(",")))
    if len(ids) > MAX_RUNS:
        raise Invalid(f"a comparison holds at most {MAX_RUNS} runs (got {len(ids)})", field="ids")
    return ids


@router.get("/methods", response_class=HTMLResponse)
def methods_page(
    request: Request, session: SessionDep, user: OptionalUser, ids: Annotated[str | None, Query()] = None
) -> Response:
    user = require(user)
    runs = [get_job(session, user=user, job_id=i).id for i in parse_ids(ids)]  # 404 for a run not theirs
    methods = method_choices(session)
    datasets = [(d, objective) for d in list_datasets(session, user=user) if (objective := finetune_objective(d))]
    return render(
        request,
        "method/compare.html",
        user,
        datasets=datasets,
        # Only models whose weights are ready: an upload or hub import may still be converting.
        models=[m for m in list_models(session, user=user) if m.status == "ready"],
        methods=methods,
        # What the page's script needs of each method to word its checks.
        facts={m["name"]: {k: m[k] for k in ("short_label", "share", "share_range", "adapter")} for m in methods},
        settings=shared_settings(),
        ids=runs,
    )
