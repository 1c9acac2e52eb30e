"""Base models: registering Hugging Face directories (local, uploaded, imported, pretrain outputs), listing what
a user may use, and the admin's trust_remote_code switch.

Every function that adds, changes or removes a model publishes `model_key` once its session commits, whoever
commits it (a route, the CLI, a worker registering a trained model): the live models lists follow that."""

import json
import struct
from pathlib import Path
from typing import Any

from sqlalchemy import event, or_, select
from sqlalchemy.orm import Session

from backend.db import Job, Model, User
from backend.errors import Conflict, Forbidden, Invalid, NotFound
from backend.events import publish_model
from backend.storage import get_storage, is_local, join, key_of

# A safetensors header is JSON describing the tensors; real ones are kilobytes to a few megabytes.
MAX_HEADER_BYTES = 100 * 1024 * 1024


def publish_on_commit(session: Session, model_id: int) -> None:
    """Wake the live models lists once `session` commits: published earlier, a reader would find nothing new."""
    event.listen(session, "after_commit", lambda _session: publish_model(model_id), once=True)


def stored_chat_template(key: str) -> bool:
    """`has_chat_template` for a stored model, reading only the tokenizer's small files (never the weights)."""
    storage = get_storage()
    local = storage.local_path(key)
    if local is not None:
        return has_chat_template(local)
    names = {k.rsplit("/", 1)[-1] for k in storage.list(key)}
    if {"chat_template.jinja", "chat_template.json"} & names:
        return True
    try:
        with storage.open(join(key, "tokenizer_config.json")) as f:
            config = json.load(f)
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and bool(config.get("chat_template"))


def read_model_json(key: str, name: str) -> dict[str, Any]:
    """A stored model's small JSON file (config.json, ...), or {} when it is missing or not an object."""
    try:
        with get_storage().open(join(key, name)) as f:
            value = json.load(f)
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def has_chat_template(path: Path) -> bool:
    """Whether the tokenizer in `path` carries a chat template (read from its files: no tokenizer loaded)."""
    if (path / "chat_template.jinja").is_file() or (path / "chat_template.json").is_file():
        return True
    try:
        config = json.loads((path / "tokenizer_config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and bool(config.get("chat_template"))


def model_key(model_id: int) -> str:
    """Where an uploaded or imported model is stored: models/<id>/."""
    return f"models/{model_id}"


def _valid_shape(shape: object) -> bool:
    return isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)


def _header(file: Path) -> dict[str, Any]:
    """The JSON header of a safetensors file, or Invalid naming the file."""
    try:
        with file.open("rb") as f:
            (header_len,) = struct.unpack("<Q", f.read(8))
            if header_len > MAX_HEADER_BYTES:
                raise ValueError(f"header of {header_len} bytes")
            header = json.loads(f.read(header_len))
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
        for name, info in header.items():
            shape = info.get("shape") if isinstance(info, dict) else None
            if name != "__metadata__" and not (
                isinstance(shape, list)
                and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
            ):
                raise ValueError(f"tensor {name!r} has no valid shape")
        return header
    except (OSError, ValueError, struct.error) as exc:
        raise Invalid(f"{file.name} is not a valid safetensors file ({exc})", field="file", file=file.name) from None


def safetensors_parameter_count(directory: Path) -> int:
    """Sum of tensor sizes read from the safetensors headers (no weights loaded, no torch)."""
    total = 0
    for file in sorted(directory.glob("*.safetensors")):
        for name, info in _header(file).items():
            if name == "__metadata__":
                continue
            count = 1
            for dim in info["shape"]:  # checked by _header: a list of non-negative ints
                count *= dim
            total += count
    return total


def inspect_model_dir(path: Path) -> tuple[str, int]:
    """(model_type, parameter count) of a Hugging Face model directory, or Invalid naming what is missing."""
    if not path.is_dir():
        raise Invalid(f"{path} is not a directory", field="path")
    config = path / "config.json"
    if not config.is_file():
        raise Invalid(f"{path} has no config.json: not a Hugging Face model directory", field="path")
    if not any(path.glob("*.safetensors")):
        raise Invalid(f"{path} has no *.safetensors weights (only safetensors are loaded)", field="path")
    if not (path / "tokenizer.json").is_file() and not (path / "tokenizer_config.json").is_file():
        raise Invalid(f"{path} has no tokenizer files", field="path")
    try:
        model_type = str(json.loads(config.read_text()).get("model_type", ""))
    except (ValueError, AttributeError):
        raise Invalid(f"{path}/config.json is not a JSON object", field="path") from None
    return model_type, safetensors_parameter_count(path)


def register_model(
    session: Session,
    *,
    owner_id: int,
    path: Path,
    name: str = "",
    source: str = "local",
    job_id: int | None = None,
    shared: bool = False,
    details: dict[str, Any] | None = None,
    key: str = "",
) -> Model:
    """Add a model directory to the base-model list: stored under `key` when given (its files are stored there
    by the caller), else where it is with local storage, or copied to models/<id>/ with remote storage (the
    other machines read it from there; the directory itself stays)."""
    path = path.resolve()
    architecture, parameters = inspect_model_dir(path)
    remote = not key and not is_local()
    model = Model(
        owner_id=owner_id,
        name=name or path.name,
        source=source,
        path="" if remote else key or key_of(path),
        architecture=architecture,
        parameters=parameters,
        shared=shared,
        job_id=job_id,
        details=details or {},
    )
    session.add(model)
    session.flush()
    if remote:
        model.path = model_key(model.id)
        get_storage().put_tree(model.path, path)
    publish_on_commit(session, model.id)
    return model


def adopt_model_dir(
    session: Session,
    *,
    owner_id: int,
    staged: Path,
    name: str,
    source: str,
    shared: bool = False,
    details: dict[str, Any] | None = None,
) -> Model:
    """Register a checked directory the studio owns from now on: it is stored as models/<id>/ (and removed)."""
    architecture, parameters = inspect_model_dir(staged)
    model = Model(
        owner_id=owner_id,
        name=name,
        source=source,
        path="",
        architecture=architecture,
        parameters=parameters,
        shared=shared,
        details=details or {},
    )
    session.add(model)
    session.flush()  # the id names the directory
    model.path = model_key(model.id)
    get_storage().put_tree(model.path, staged, move=True)
    publish_on_commit(session, model.id)
    return model


def create_import(
    session: Session,
    *,
    owner_id: int,
    name: str,
    source: str,
    details: dict[str, Any],
    revision: str | None = None,
    shared: bool = False,
) -> Model:
    """A Model row in status "importing"; a worker stores models/<id>/ and marks it ready or failed."""
    model = Model(
        owner_id=owner_id,
        name=name,
        source=source,
        revision=revision,
        path="",
        status="importing",
        shared=shared,
        details=details,
    )
    session.add(model)
    session.flush()
    model.path = model_key(model.id)
    publish_on_commit(session, model.id)
    return model


def list_models(session: Session, *, user: User) -> list[Model]:
    """Models `user` may fine-tune: their own and shared ones (admins see all)."""
    q = select(Model).order_by(Model.id.desc())
    if not user.is_admin:
        q = q.where(or_(Model.owner_id == user.id, Model.shared.is_(True)))
    return list(session.scalars(q))


def visible_model(session: Session, *, user: User, model_id: int, field: str | None = None) -> Model:
    """A model `user` may see and train from (own, shared, or any for an admin)."""
    model = session.get(Model, model_id)
    if model is None or not (model.shared or model.owner_id == user.id or user.is_admin):
        if field:
            raise Invalid(f"base model {model_id} not found", field=field)
        raise NotFound(f"model {model_id} not found")
    return model


def ready_model(session: Session, *, user: User, model_id: int, field: str) -> Model:
    """A visible model whose weights are ready to train from (an import may still be running or have failed)."""
    model = visible_model(session, user=user, model_id=model_id, field=field)
    if model.status != "ready":
        why = f": {model.error}" if model.status == "failed" and model.error else ""
        raise Invalid(f"model {model_id} is {model.status}{why}; it cannot be trained from yet", field=field)
    return model


def _editable_model(session: Session, *, user: User, model_id: int) -> Model:
    model = visible_model(session, user=user, model_id=model_id)
    if not (user.is_admin or model.owner_id == user.id):
        raise Forbidden(f"model {model_id} is shared with you; only its owner or an admin can change it")
    return model


def update_model(
    session: Session, *, user: User, model_id: int, name: str | None = None, trust_remote_code: bool | None = None
) -> Model:
    """Rename a model, or (admins only) let its own code run when it is loaded."""
    model = _editable_model(session, user=user, model_id=model_id)
    if trust_remote_code is not None:
        if not user.is_admin:
            # Remote code runs with the worker's rights, on every job that loads the model.
            raise Forbidden("only an admin can change trust_remote_code", field="trust_remote_code")
        model.details = {**(model.details or {}), "trust_remote_code": trust_remote_code}
    if name is not None:
        model.name = name
    publish_on_commit(session, model.id)
    return model


def delete_model(session: Session, *, user: User, model_id: int) -> None:
    """Forget a model no job uses; files the studio owns (uploads, imports) go too, a local directory stays."""
    model = _editable_model(session, user=user, model_id=model_id)
    users = list(
        session.scalars(
            select(Job.id).where(or_(Job.base_model_id == model.id, Job.tokenizer_model_id == model.id)).limit(5)
        )
    )
    if users:
        raise Conflict(f"model {model_id} is used by job(s) {', '.join(map(str, users))}; it cannot be deleted")
    session.delete(model)
    session.flush()
    publish_on_commit(session, model_id)
    storage = get_storage()
    for owned in (model_key(model_id), import_key(model_id)):
        storage.delete_prefix(owned)


def import_key(model_id: int) -> str:
    """Where the source of a running import waits (an uploaded .gguf), removed when the import ends."""
    return f"imports/{model_id}"
