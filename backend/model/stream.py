"""Server-sent events for one model's import: a `model` event now and on every change, `end` once it is over."""

import json
from collections.abc import AsyncIterator
from typing import Any

from anyio import to_thread

from backend.db import Model, session_scope
from backend.events import Broadcaster, model_key
from backend.model.schemas import ModelRead

SAFETY_POLL_SECONDS = 5.0  # a missed publish costs at most this long


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
