"""Server-sent events for the models: one model's import (`model_events`) and the live models list
(`models_list_events`).

One model: a `model` event now and on every change, `end` once its import is over. The list: a `models`
event with every visible model on connect (the snapshot: a reconnect resyncs), then a `model` event per model
that appears or changes (status, import progress, name, the jobs that use it) and `removed` per model gone.
"""

import json
import math
from collections.abc import AsyncIterator
from typing import Any

from anyio import to_thread
from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.db import Job, Model, User, session_scope
from backend.events import Broadcaster, any_key, model_key, pace
from backend.model.schemas import ModelRead
from backend.model.service import list_models

SAFETY_POLL_SECONDS = 5.0  # a missed publish costs at most this long
LIST_READ_SECONDS = 1.0  # the models list is read at most this often, however many wake-ups arrive
USED_BY_LIMIT = 6  # the list shows five jobs per model and "+N more"


def _read(model_id: int) -> dict[str, Any] | None:
    with session_scope() as s:
        model = s.get(Model, model_id)
        if model is None:
            return None
        view = ModelRead.model_validate(model).model_dump(mode="json")
        return {**view, "progress": (model.details or {}).get("progress")}


async def model_events(model_id: int, broadcaster: Broadcaster) -> AsyncIterator[dict[str, str]]:
    """Yield the model's status and import progress whenever they change, until the import has ended."""
    last: dict[str, Any] | None = None
    with broadcaster.listen(model_key(model_id)) as wake:
        while True:
            view = await to_thread.run_sync(_read, model_id)
            if view is None:
                yield {"event": "end", "data": json.dumps({"status": "deleted"})}
                return
            if view != last:
                last = view
                yield {"event": "model", "data": json.dumps(view)}
            if view["status"] != "importing":
                yield {"event": "end", "data": json.dumps({"status": view["status"]})}
                return
            await broadcaster.wait(wake, SAFETY_POLL_SECONDS)


def _used_by(session: Session, user: User) -> dict[int, list[dict[str, Any]]]:
    """Model id → the jobs `user` may see that started from it, newest first (as `jobs_by_model`, reading only
    the columns a row shows: the stream reads this at every look)."""
    q = select(Job.id, Job.name, Job.kind, Job.status, Job.base_model_id, Job.tokenizer_model_id).where(
        Job.base_model_id.is_not(None) | Job.tokenizer_model_id.is_not(None)
    )
    if not user.is_admin:
        q = q.where(Job.owner_id == user.id)
    found: dict[int, list[dict[str, Any]]] = {}
    for job in session.execute(q.order_by(Job.id.desc())):
        for model_id in {job.base_model_id, job.tokenizer_model_id} - {None}:
            found.setdefault(model_id, []).append(
                {"id": job.id, "name": job.name, "kind": job.kind, "status": job.status}
            )
    return found


def list_views(user_id: int) -> dict[int, dict[str, Any]]:
    """Model id → what a row of the models list shows, for every model the user may see (newest first)."""
    with session_scope() as s:
        user = s.get(User, user_id)
        if user is None:
            return {}
        used = _used_by(s, user)
        views = {}
        for model in list_models(s, user=user):
            view = ModelRead.model_validate(model).model_dump(mode="json")
            jobs = used.get(model.id, [])
            views[model.id] = {
                **view,
                "progress": (model.details or {}).get("progress"),
                "editable": user.is_admin or model.owner_id == user.id,
                "used_by": jobs[:USED_BY_LIMIT],
                "used_by_count": len(jobs),
            }
        return views


async def models_list_events(user_id: int, broadcaster: Broadcaster) -> AsyncIterator[dict[str, str]]:
    """Yield the snapshot, then each model that appears, changes or goes, for as long as the client listens."""
    seen: dict[int, dict[str, Any]] | None = None
    # Registered before the first read, so a change between the read and the wait is never lost.
    with broadcaster.listen(any_key("model")) as wake:
        read_at = -math.inf
        while True:
            # An import publishes a few times a second, and each look reads every model and job: one a second.
            read_at = await pace(read_at, LIST_READ_SECONDS)
            views = await to_thread.run_sync(list_views, user_id)
            if seen is None:
                yield {"event": "models", "data": json.dumps({"items": list(views.values())})}
            else:
                for model_id, view in views.items():
                    if seen.get(model_id) != view:
                        yield {"event": "model", "data": json.dumps(view)}
                for model_id in seen.keys() - views.keys():
                    yield {"event": "removed", "data": json.dumps({"id": model_id})}
            seen = views
            # Jobs that start using a model don't publish a model key: the safety poll brings "used by" along.
            await broadcaster.wait(wake, SAFETY_POLL_SECONDS)
