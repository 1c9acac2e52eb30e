"""Base models: registering local Hugging Face directories and pretrain outputs, listing what a user may use."""

import json
import struct
from pathlib import Path

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from backend.db import Model, User
from backend.errors import Invalid, NotFound


def safetensors_parameter_count(directory: Path) -> int:
    """Sum of tensor sizes read from the safetensors headers (no weights loaded, no torch)."""
    total = 0
    for file in sorted(directory.glob("*.safetensors")):
        with file.open("rb") as f:
            (header_len,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(header_len))
        for name, info in header.items():
            if name == "__metadata__":
                continue
            count = 1
            for dim in info["shape"]:
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
    model_type = str(json.loads(config.read_text()).get("model_type", ""))
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
) -> Model:
    """Add a model directory to the base-model list."""
    path = path.resolve()
    architecture, parameters = inspect_model_dir(path)
    model = Model(
        owner_id=owner_id,
        name=name or path.name,
        source=source,
        path=str(path),
        architecture=architecture,
        parameters=parameters,
        shared=shared,
        job_id=job_id,
    )
    session.add(model)
    session.flush()
    return model


def list_models(session: Session, *, user: User) -> list[Model]:
    """Models `user` may fine-tune: their own and shared ones (admins see all)."""
    q = select(Model).order_by(Model.id.desc())
    if not user.is_admin:
        q = q.where(or_(Model.owner_id == user.id, Model.shared.is_(True)))
    return list(session.scalars(q))


def visible_model(session: Session, *, user: User, model_id: int, field: str | None = None) -> Model:
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
