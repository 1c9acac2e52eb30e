"""Imports a worker finishes: a Hub download or a GGUF de-quantization. The web app creates the row
("importing") and sends `studio.import_model` after the commit; the worker reads an `ImportSpec`, builds the
directory in a staging folder and calls `finish_import` or `fail_import`, each in a short session of its own.

An import is not claimed when it starts: a worker killed halfway leaves the row "importing", and the
redelivered task must be able to redo it. Two deliveries at once only duplicate work, because the staged
directory is moved into place only while the row is still "importing".
"""

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session

from backend.db import Model, User, session_scope, utcnow
from backend.errors import DomainError
from backend.events import publish_model
from backend.model.service import create_import, imports_dir, inspect_model_dir

ERROR_CHARS = 4000


@dataclass(frozen=True)
class ImportSpec:
    model_id: int
    source: str  # "gguf" | "hub"
    target: Path  # data_dir/models/<id>: what the import fills
    gguf_path: Path | None = None
    hub_id: str | None = None
    revision: str | None = None


def create_hub_import(session: Session, *, user: User, hub_id: str, revision: str, name: str = "") -> Model:
    """A Hub model to be downloaded by a worker, pinned to `revision` (the caller enqueues after commit)."""
    return create_import(
        session, owner_id=user.id, name=name or hub_id, source="hub", revision=revision, details={"hub_id": hub_id}
    )


def load_import(model_id: int) -> ImportSpec | None:
    """What to import for model `model_id`; None when there is nothing left to do (deleted, or finished)."""
    with session_scope() as s:
        model = s.get(Model, model_id)
        if model is None or model.status != "importing":
            return None
        details = model.details or {}
        gguf = details.get("gguf_file")
        return ImportSpec(
            model_id=model.id,
            source=model.source,
            target=Path(model.path),
            gguf_path=imports_dir(model.id) / gguf if gguf else None,
            hub_id=details.get("hub_id"),
            revision=model.revision,
        )


def record_progress(
    model_id: int,
    stage: str,
    *,
    step: int,
    steps: int,
    done: int | None = None,
    total: int | None = None,
    unit: str | None = None,
) -> None:
    """Store where a running import is in Model.details["progress"] and tell the model's page. A new `stage`
    is added to the history (the page shows how long each took); a repeated one only moves `done`."""
    with session_scope() as s:
        model = s.get(Model, model_id)
        if model is None or model.status != "importing":
            return
        details = dict(model.details or {})
        history = list((details.get("progress") or {}).get("history") or [])
        if not history or history[-1]["stage"] != stage:
            history.append({"stage": stage, "at": utcnow().isoformat()})
        progress = {"stage": stage, "step": step, "steps": steps, "history": history}
        progress.update({k: v for k, v in (("done", done), ("total", total), ("unit", unit)) if v is not None})
        model.details = {**details, "progress": progress}
    publish_model(model_id)


def finish_import(model_id: int, staged: Path, details: dict[str, Any] | None = None) -> bool:
    """Move the staged directory into place and mark the model ready; False (staging removed) when the row was
    deleted or another delivery finished first. An invalid directory marks the import failed instead."""
    try:
        architecture, parameters = inspect_model_dir(staged)
    except DomainError as exc:
        shutil.rmtree(staged, ignore_errors=True)
        fail_import(model_id, exc.message.replace(str(staged), "the converted model"))
        return False
    with session_scope() as s:
        model = s.get(Model, model_id)
        if model is None or model.status != "importing":
            shutil.rmtree(staged, ignore_errors=True)
            return False
        target = Path(model.path)
        shutil.rmtree(target, ignore_errors=True)  # what a killed earlier attempt left
        staged.replace(target)
        model.status, model.error = "ready", None
        model.architecture, model.parameters = architecture, parameters
        model.details = {**(model.details or {}), **(details or {})}
    shutil.rmtree(imports_dir(model_id), ignore_errors=True)
    publish_model(model_id)
    return True


def fail_import(model_id: int, error: str) -> None:
    """Mark a running import failed with `error` (kept short: it is shown in the models list)."""
    with session_scope() as s:
        s.execute(
            update(Model)
            .where(Model.id == model_id, Model.status == "importing")
            .values(status="failed", error=error[:ERROR_CHARS])
        )
    shutil.rmtree(imports_dir(model_id), ignore_errors=True)
    publish_model(model_id)
