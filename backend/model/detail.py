"""A model's page: its files and size on disk, a config summary read from the JSON files (no weights loaded),
and the jobs that started from it."""

from typing import Any

from sqlalchemy.orm import Session

from backend.db import User
from backend.job.service import jobs_using
from backend.model.schemas import ModelConfigSummary, ModelDetail, ModelFile, ModelJob
from backend.model.service import read_model_json, stored_chat_template, visible_model
from backend.storage import get_storage

MAX_FILES = 500  # a model directory holds tens of files; a stray huge folder must not make the page huge


def model_files(key: str) -> list[ModelFile]:
    """Files stored under `key` (names relative to it), sorted; none while an import has not finished."""
    storage = get_storage()
    keys = storage.list(key)[:MAX_FILES]
    return [ModelFile(name=k.removeprefix(f"{key}/"), size_bytes=storage.size(k)) for k in keys]


def _int(config: dict[str, Any], *keys: str) -> int | None:
    for key in keys:
        value = config.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def config_summary(key: str) -> ModelConfigSummary | None:
    """Layers, widths, vocabulary, context and chat template of a stored Hugging Face directory; None without
    config."""
    config = read_model_json(key, "config.json")
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
        chat_template=stored_chat_template(key),
    )


def model_detail(session: Session, *, user: User, model_id: int) -> ModelDetail:
    """Everything the model page shows, for a model `user` may see."""
    model = visible_model(session, user=user, model_id=model_id)
    key = model.path or None
    files = model_files(key) if key and model.status == "ready" else []
    jobs = [ModelJob.model_validate(j) for j in jobs_using(session, user=user, model_id=model.id)]
    return ModelDetail.model_validate(model).model_copy(
        update={
            "files": files,
            "size_bytes": sum(f.size_bytes for f in files),
            "config": config_summary(key) if key and files else None,
            "jobs": jobs,
        }
    )
