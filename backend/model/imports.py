"""Imports a worker finishes: a Hub download or a GGUF de-quantization. The web app creates the row
("importing") and sends `studio.import_model` after the commit; the worker claims it (`backend.work`'s lease: the
row stays "importing" and gains a lease holder), reads an `ImportSpec`, builds the directory in a staging folder
and calls `finish_import` or `fail_import`, each in a short session of its own. A worker lost halfway leaves the
row "importing" with an expired lease: the reaper queues it again (`recover_import`), and the next attempt
starts over; the staged directory is moved into place only by the attempt that owns the row.
"""

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from backend.db import Model, User, session_scope, utcnow
from backend.errors import DomainError
from backend.events import publish_model
from backend.model.service import create_import, import_key, inspect_model_dir
from backend.storage import get_cache, get_storage, join
from backend.work import lease
from backend.work.kinds import IMPORT
from backend.work.lease import Expired, Lease, LeaseLost

ERROR_CHARS = 4000


@dataclass(frozen=True)
class ImportSpec:
    model_id: int
    source: str  # "gguf" | "hub"
    target: str  # the key models/<id>: what the import fills
    gguf_path: Path | None = None  # a local copy of the uploaded .gguf
    hub_id: str | None = None
    revision: str | None = None


def _local_gguf(model_id: int, name: str) -> Path | None:
    """The uploaded .gguf as a local file (a cached copy with remote storage); None when it is gone."""
    try:
        return get_cache().file(join(import_key(model_id), name))
    except FileNotFoundError:
        return None


def create_hub_import(session: Session, *, user: User, hub_id: str, revision: str, name: str = "") -> Model:
    """A Hub model to be downloaded by a worker, pinned to `revision` (the caller enqueues after commit)."""
    return create_import(
        session, owner_id=user.id, name=name or hub_id, source="hub", revision=revision, details={"hub_id": hub_id}
    )


def claim_import(model_id: int, worker: str = "worker") -> Lease | None:
    """Take the queued import of model `model_id` for `worker`; None when another delivery has it, or there is
    nothing left to do (deleted, or finished)."""
    with session_scope() as s:
        return lease.claim(s, IMPORT, model_id, worker)


def _owned(s: Session, model_id: int) -> Model | None:
    """The model while its import is this worker's (fenced by the lease this process holds), else None."""
    held = lease.held(IMPORT, model_id)
    model = s.get(Model, model_id, with_for_update=True)
    if model is None or model.status != "importing":
        return None
    if held is not None and (model.attempt != held.attempt or model.lease_worker != held.worker):
        return None
    return model


def load_import(model_id: int) -> ImportSpec | None:
    """What to import for model `model_id`; None when there is nothing left to do (deleted, or finished)."""
    with session_scope() as s:
        model = _owned(s, model_id)
        if model is None:
            return None
        details = model.details or {}
        gguf = details.get("gguf_file")
        return ImportSpec(
            model_id=model.id,
            source=model.source,
            target=model.path,
            gguf_path=_local_gguf(model.id, gguf) if gguf else None,
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
    """Store where a running import is in Model.details["progress"] (renewing the lease) and tell the model's
    page. A new `stage` is added to the history (the page shows how long each took); a repeated one only moves
    `done`. LeaseLost once this worker no longer owns the import."""
    with session_scope() as s:
        model = _owned(s, model_id)
        if model is None:
            raise LeaseLost(f"the import of model {model_id} is no longer this worker's")
        model.heartbeat_at = lease.db_now(s)
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
        model = _owned(s, model_id)
        if model is None:
            shutil.rmtree(staged, ignore_errors=True)
            return False
        # Stored before the row says ready (and replacing what a killed earlier attempt stored), so a reader that
        # sees "ready" finds every file.
        get_storage().put_tree(model.path, staged, move=True)
        model.status, model.error, model.lease_worker = "ready", None, None
        model.architecture, model.parameters = architecture, parameters
        model.details = {**(model.details or {}), **(details or {})}
    get_storage().delete_prefix(import_key(model_id))
    publish_model(model_id)
    return True


def fail_import(model_id: int, error: str) -> None:
    """Mark a running import failed with `error` (kept short: it is shown in the models list); nothing changes
    when this worker no longer owns it."""
    with session_scope() as s:
        model = _owned(s, model_id)
        if model is None:
            return
        model.status, model.error, model.lease_worker = "failed", error[:ERROR_CHARS], None
    get_storage().delete_prefix(import_key(model_id))
    publish_model(model_id)


def recover_import(session: Session, row: Expired, max_attempts: int) -> bool:
    """The worker of a running import was lost: import again on a live worker (True: the uploaded GGUF is kept
    for it), or fail once the attempts are spent."""
    model = session.get(Model, row.id)
    assert model is not None
    details = {k: v for k, v in (model.details or {}).items() if k != "progress"}
    if row.spent(max_attempts):
        error = f"the worker ({row.lease_worker}) stopped answering while importing, on {row.last_note(max_attempts)}"
        if lease.give_up(session, IMPORT, row, error=error, details=details):
            get_storage().delete_prefix(import_key(row.id))
        return False
    return lease.take_over(session, IMPORT, row, details=details)
