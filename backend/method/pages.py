"""The Methods view: one dataset and base model trained with several methods, their costs and results side by side
(trainable share against the registry's typical one, memory, time, throughput, final evaluation, output size)."""

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, Response
from sqlalchemy.orm import Session

from backend.dataset.service import list_datasets
from backend.db import Dataset
from backend.deps import OptionalUser, SessionDep
from backend.errors import Invalid
from backend.job.compare import MAX_RUNS
from backend.job.schemas import Hyperparameters
from backend.job.service import get_job
from backend.method import registry
from backend.model.service import list_models
from backend.web import page_id, render, require
from backend.worker.service import can_run_qlora, live_training_workers

router = APIRouter(include_in_schema=False)

# The settings every compared run shares; the rest keep their defaults.
SHARED_SETTINGS = ("max_steps", "learning_rate", "batch_size", "max_length")


def finetune_objective(dataset: Dataset) -> str | None:
    """The objective a fine-tune of `dataset` trains by default; None when its shape has none."""
    name = registry.default_objective(dataset.shape)
    return name if name is not None and "finetune" in registry.objective(name).kinds else None


def _input(schema: dict[str, Any]) -> dict[str, Any]:
    """An <input>'s min, max and step from a field's JSON schema, looking inside `anyOf` for an optional field."""
    found: dict[str, Any] = {"step": "any"}
    for part in [schema, *schema.get("anyOf", [])]:
        found.update({attr: part[key] for key, attr in (("minimum", "min"), ("maximum", "max")) if key in part})
        if part.get("type") == "integer":
            found["step"] = 1
    return found


def shared_settings() -> list[dict[str, Any]]:
    """The shared settings' form fields: name, default, bounds and help, from Hyperparameters itself."""
    properties = Hyperparameters.model_json_schema()["properties"]
    return [
        {
            "name": name,
            "default": properties[name].get("default"),
            "help": properties[name].get("description", ""),
            **_input(properties[name]),
        }
        for name in SHARED_SETTINGS
    ]


def method_choices(session: Session) -> list[dict[str, Any]]:
    """Every fine-tune method, with why it is unavailable here (the data decides the rest, in the page)."""
    cuda = any(can_run_qlora(w) for w in live_training_workers(session))
    choices = []
    for entry in registry.catalog()["methods"]:
        if "finetune" not in entry["kinds"]:
            continue
        unavailable = ""
        if entry["requires"] == "cuda_bitsandbytes" and not cuda:
            unavailable = "needs a CUDA worker with bitsandbytes, and none is live"
        choices.append({**entry, "unavailable": unavailable})
    return choices


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
