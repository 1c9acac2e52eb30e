"""Playground generations: what answers a prompt (a base model, a job's adapter or model, or one of its
checkpoints), checked before the row is queued and resolved again by the worker that loads it."""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.db import Generation, Job, Model, User
from backend.errors import Invalid, NotFound
from backend.job.checkpoints import MARKER, list_checkpoints
from backend.job.service import get_job
from backend.method import registry
from backend.model.service import ready_model, stored_chat_template
from backend.playground.schemas import GenerationCreate, GenerationRead
from backend.playground.tool_calls import parse_tool_calls
from backend.storage import get_cache, get_storage, join, work_dir

HISTORY_LIMIT = 20


@dataclass(frozen=True)
class Target:
    """Where the weights that answer live, and how to load them (plain values: the worker needs no session)."""

    kind: str  # "model": a full model directory; "adapter": a PEFT adapter loaded on `base_path`
    key: str  # where the weights are stored
    tokenizer_key: str
    base_key: str | None = None
    task: str = "generate"  # "classify": a sequence classifier answers with a label and its probability
    labels: list[str] = field(default_factory=list)  # classify: class names by id (an adapter's head needs them)
    sft: bool = False  # trained on chat-formatted prompts
    trust_remote_code: bool = False

    # Local folders for the loaders, fetched at the first use (the API's checks read listings and small files
    # through the keys; only a worker loads weights): the stored folders with local storage, cached copies else.
    @property
    def path(self) -> Path:
        return get_cache().tree(self.key)

    @property
    def tokenizer_path(self) -> Path:
        return get_cache().tree(self.tokenizer_key)

    @property
    def base_path(self) -> Path | None:
        return get_cache().tree(self.base_key) if self.base_key else None


def has_tokenizer(path: Path) -> bool:
    return (path / "tokenizer_config.json").is_file() or (path / "tokenizer.json").is_file()


def weights_kind(path: Path) -> str | None:
    """ "adapter", "model" or None for a directory holding neither (yet)."""
    if (path / "adapter_config.json").is_file() and any(path.glob("adapter_model*.safetensors")):
        return "adapter"
    if (path / "config.json").is_file() and any(path.glob("*.safetensors")):
        return "model"
    return None


def stored_kind(key: str) -> str | None:
    """`weights_kind` of a stored folder, read from its listing (nothing fetched). In a bucket, only a complete
    folder counts: a checkpoint or a job's final adapter/ or model/ is complete once its COMPLETE marker, stored
    after every other file, is listed (a listing taken while the worker stores it has some files, no marker)."""
    storage = get_storage()
    local = storage.local_path(key)
    if local is not None:
        return weights_kind(local)
    names = {k.removeprefix(f"{key}/") for k in storage.list(key)}
    if MARKER not in names:
        return None
    weights = {n for n in names if n.endswith(".safetensors") and "/" not in n}
    if "adapter_config.json" in names and any(n.startswith("adapter_model") for n in weights):
        return "adapter"
    if "config.json" in names and weights:
        return "model"
    return None


def stored_tokenizer(key: str) -> bool:
    """`has_tokenizer` of a stored folder."""
    storage = get_storage()
    local = storage.local_path(key)
    if local is not None:
        return has_tokenizer(local)
    return any(storage.exists(join(key, name)) for name in ("tokenizer_config.json", "tokenizer.json"))


def job_output_key(job_id: int) -> str:
    """Where a job's adapter/ or model/ folder (and its zips and exports) are stored."""
    return f"jobs/{job_id}"


def job_output_dir(job_id: int) -> Path:
    """The local folder of `job_output_key` (local storage), or the work folder with remote storage."""
    return work_dir(job_output_key(job_id))


def model_target(model: Model) -> Target:
    return Target(
        kind="model",
        key=model.path,
        tokenizer_key=model.path,
        trust_remote_code=bool((model.details or {}).get("trust_remote_code")),
    )


def _job_weights(job: Job, checkpoint: str | None) -> tuple[str, str]:
    """(kind, stored key) of the job's final adapter/model, or of its checkpoint `checkpoint`."""
    if checkpoint is not None:
        found = {c.name: c.key for c in list_checkpoints(job.id)}
        if checkpoint not in found:
            names = ", ".join(found) or "none yet"
            raise Invalid(f"job {job.id} has no checkpoint {checkpoint} (it has: {names})", field="checkpoint")
        kind = stored_kind(found[checkpoint])
        if kind is None:
            raise Invalid(f"{checkpoint} of job {job.id} holds no loadable weights", field="checkpoint")
        return kind, found[checkpoint]
    out = job_output_key(job.id)
    for name in ("adapter", "model"):
        if (kind := stored_kind(f"{out}/{name}")) is not None:
            return kind, f"{out}/{name}"
    raise Invalid(
        f"job {job.id} ({job.status}) has no trained adapter or model yet; pick one of its checkpoints, "
        "or wait until it succeeds",
        field="job_id",
    )


def job_target(session: Session, job: Job, checkpoint: str | None) -> Target:
    """The weights of job `job` (its final output, or `checkpoint`) and what they load on."""
    kind, key = _job_weights(job, checkpoint)
    base = session.get(Model, job.base_model_id) if job.base_model_id is not None else None
    if kind == "adapter" and base is None:
        raise Invalid(f"job {job.id} trained an adapter but its base model is gone", field="job_id")
    # A checkpoint holds the tokenizer when the Trainer saved it; else the job's export or its base has it.
    out = job_output_key(job.id)
    candidates = [key, f"{out}/adapter", f"{out}/model", base.path if base is not None else None]
    tokenizer_key = next((k for k in candidates if k is not None and stored_tokenizer(k)), None)
    if tokenizer_key is None:
        raise Invalid(f"no tokenizer found for job {job.id}", field="job_id")
    classify = registry.objective(job.objective).classifier
    labels = [str(x) for x in (job.resolved_config or {}).get("labels", [])]
    if classify and kind == "adapter" and not labels:
        raise Invalid(f"job {job.id} recorded no label names; its classifier head cannot be rebuilt", field="job_id")
    return Target(
        kind=kind,
        key=key,
        tokenizer_key=tokenizer_key,
        base_key=base.path if base is not None and kind == "adapter" else None,
        task="classify" if classify else "generate",
        labels=labels,
        sft=registry.objective(job.objective).chat,  # asked the way training laid prompts out
        trust_remote_code=bool(base is not None and (base.details or {}).get("trust_remote_code")),
    )


def resolve_target(session: Session, *, user: User, data: GenerationCreate) -> Target:
    """What answers `data`'s prompt, if `user` may use it and its weights exist; Invalid naming the field."""
    if data.model_id is not None:
        return model_target(ready_model(session, user=user, model_id=data.model_id, field="model_id"))
    assert data.job_id is not None  # the schema requires one of the two
    try:
        job = get_job(session, user=user, job_id=data.job_id)
    except NotFound as exc:
        raise Invalid(exc.message, field="job_id") from None
    return job_target(session, job, data.checkpoint)


def create_generation(session: Session, *, user: User, data: GenerationCreate) -> Generation:
    """A queued generation (the caller commits, then enqueues it)."""
    target = resolve_target(session, user=user, data=data)
    chat = data.chat if data.chat is not None else (target.sft or stored_chat_template(target.tokenizer_key))
    params: dict[str, Any] = {
        "max_new_tokens": data.max_new_tokens,
        "temperature": data.temperature,
        "top_p": data.top_p,
        "chat": chat or bool(data.tools),
        "task": target.task,
    }
    if data.tools:
        params["tools"] = data.tools
    row = Generation(
        owner_id=user.id,
        model_id=data.model_id,
        job_id=data.job_id,
        checkpoint=data.checkpoint,
        prompt=data.prompt,
        params=params,
    )
    session.add(row)
    session.flush()
    return row


def get_generation(session: Session, *, user: User, generation_id: int) -> Generation:
    """The generation, if `user` owns it (or is an admin)."""
    row = session.get(Generation, generation_id)
    if row is None or not (row.owner_id == user.id or user.is_admin):
        raise NotFound(f"generation {generation_id} not found")
    return row


def list_generations(
    session: Session, *, user: User, job_id: int | None = None, model_id: int | None = None, limit: int = HISTORY_LIMIT
) -> list[Generation]:
    """`user`'s recent generations, newest first, optionally for one job or one model."""
    q = select(Generation).where(Generation.owner_id == user.id).order_by(Generation.id.desc()).limit(limit)
    if job_id is not None:
        q = q.where(Generation.job_id == job_id)
    if model_id is not None:
        q = q.where(Generation.model_id == model_id)
    return list(session.scalars(q))


def target_label(session: Session, row: Generation) -> str:
    """What answered, in words."""
    if row.model_id is not None:
        model = session.get(Model, row.model_id)
        return f"model {model.name if model else '?'} (#{row.model_id})"
    job = session.get(Job, row.job_id) if row.job_id is not None else None
    text = f"job {job.name if job else '?'} (#{row.job_id})"
    return f"{text}, {row.checkpoint}" if row.checkpoint else text


def to_read(session: Session, row: Generation) -> GenerationRead:
    calls = parse_tool_calls(row.output or "", bare=bool((row.params or {}).get("tools")))
    return GenerationRead.model_validate(row).model_copy(
        update={"target": target_label(session, row), "tool_calls": calls}
    )
