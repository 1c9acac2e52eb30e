"""A model's page: its files and size on disk, a config summary read from the JSON files (no weights loaded),
and the jobs that started from it."""

import json
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from backend.db import User
from backend.job.service import jobs_using
from backend.model.schemas import ModelConfigSummary, ModelDetail, ModelFile, ModelJob
from backend.model.service import has_chat_template, visible_model

MAX_FILES = 500  # a model directory holds tens of files; a stray huge folder must not make the page huge


def model_files(directory: Path) -> list[ModelFile]:
    """Files under `directory` (names relative to it), sorted; none while an import has not finished."""
    if not directory.is_dir():
        return []
    files = sorted(p for p in directory.rglob("*") if p.is_file())[:MAX_FILES]
    return [ModelFile(name=p.relative_to(directory).as_posix(), size_bytes=p.stat().st_size) for p in files]


def _json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _int(config: dict[str, Any], *keys: str) -> int | None:
    for key in keys:
        value = config.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def config_summary(directory: Path) -> ModelConfigSummary | None:
    """Layers, widths, vocabulary, context and chat template of a Hugging Face directory; None without config."""
    config = _json(directory / "config.json")
    if not config:
        return None
    # Multimodal configs nest the language model's numbers under text_config.
    nested = config.get("text_config")
    text: dict[str, Any] = nested if isinstance(nested, dict) else config
    dtype = config.get("dtype") or config.get("torch_dtype")
    return ModelConfigSummary(
        layers=_int(text, "num_hidden_layers", "n_layer"),
        hidden_size=_int(text, "hidden_size", "n_embd"),
        attention_heads=_int(text, "num_attention_heads", "n_head"),
        kv_heads=_int(text, "num_key_value_heads"),
        vocab_size=_int(text, "vocab_size"),
        context_length=_int(text, "max_position_embeddings", "n_positions"),
        dtype=str(dtype) if dtype else None,
        chat_template=has_chat_template(directory),
    )


def model_detail(session: Session, *, user: User, model_id: int) -> ModelDetail:
    """Everything the model page shows, for a model `user` may see."""
    model = visible_model(session, user=user, model_id=model_id)
    directory = Path(model.path) if model.path else None
    files = model_files(directory) if directory and model.status == "ready" else []
    jobs = [ModelJob.model_validate(j) for j in jobs_using(session, user=user, model_id=model.id)]
    return ModelDetail.model_validate(model).model_copy(
        update={
            "files": files,
            "size_bytes": sum(f.size_bytes for f in files),
            "config": config_summary(directory) if directory and files else None,
            "jobs": jobs,
        }
    )
