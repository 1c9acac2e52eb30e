"""Weight exports as the web app sees them: checked against the job's weights on disk, deduplicated, listed."""

from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.db import Artifact, Export, Job, User
from backend.errors import Invalid, NotFound
from backend.export.gguf import NotConvertible, check_convertible
from backend.export.schemas import ACTIVE, FORMATS, ExportCreate, ExportRead
from backend.job.checkpoints import named_checkpoint
from backend.job.service import get_job
from backend.method import registry
from backend.playground.service import Target, job_target
from backend.storage import get_storage

LIST_LIMIT = 50
# The worker's sign of life inside `progress` (refreshed every few seconds, read by the reaper); not in the view.


def artifact_name(checkpoint: str | None, fmt: str, dtype: str) -> str:
    """The zip's name among the job's artifacts, e.g. checkpoint-40-merged-float16.zip, final-adapter-float32.zip."""
    return f"{checkpoint or 'final'}-{fmt}-{dtype}.zip"


def export_target(session: Session, job: Job, checkpoint: str | None) -> Target:
    """The weights to export (the playground's resolution); a refusal names `checkpoint`, the body field that
    picks them (the job itself is in the path)."""
    try:
        return job_target(session, job, checkpoint)
    except Invalid as exc:
        raise Invalid(exc.message, field="checkpoint") from None


def check_format(job: Job, target: Target, fmt: str) -> None:
    """Refuse a format the weights cannot take (merging a full model, or exporting an adapter's 'model')."""
    method = registry.method(job.method)
    # GGUF, like merged, folds an adapter into its base first: neither applies to an adapter that cannot merge.
    unmergeable = target.kind == "adapter" and not method.mergeable
    allowed = tuple(f for f in FORMATS[target.kind] if not (unmergeable and f in ("merged", "gguf")))
    if unmergeable and fmt in ("merged", "gguf"):
        raise Invalid(f"format {fmt!r} does not apply: {method.merge_note}; export it as adapter", field="format")
    if fmt not in allowed:
        what = f"a {method.label} adapter" if target.kind == "adapter" else "a full model"
        raise Invalid(
            f"format {fmt!r} does not apply: job {job.id} trained {what}; export it as {' or '.join(allowed)}",
            field="format",
        )


def check_gguf(job: Job, target: Target, data: ExportCreate) -> None:
    """Refuse at once what the worker could not write as GGUF (a 422 naming the field), and a type given to
    the wrong format."""
    if data.format != "gguf":
        if data.gguf_type is not None:
            raise Invalid("gguf_type applies to format 'gguf' only", field="gguf_type")
        return
    if "dtype" in data.model_fields_set:
        raise Invalid("a gguf export takes gguf_type (f16, bf16, q8_0, q4_0), not dtype", field="dtype")
    if registry.objective(job.objective).classifier:
        raise Invalid(
            f"format 'gguf' does not apply: job {job.id} trained a sequence classifier, which llama.cpp cannot "
            "run (its head scores labels, not tokens)",
            field="format",
        )
    model_dir = target.base_path if target.kind == "adapter" and target.base_path is not None else target.path
    try:
        check_convertible(model_dir, target.tokenizer_path)
    except NotConvertible as exc:
        raise Invalid(f"format 'gguf' does not apply: {exc}", field="format") from None


def artifact_exists(session: Session, job_id: int, name: str | None) -> bool:
    if name is None:
        return False
    art = session.scalar(select(Artifact).where(Artifact.job_id == job_id, Artifact.name == name))
    return art is not None and get_storage().exists(art.path)


def _still_current(session: Session, row: Export) -> bool:
    """A done export is reused while its zip exists and its checkpoint was not written again since (a resume from
    an older checkpoint discards the later ones, and training may save a new folder under the same name)."""
    if not artifact_exists(session, row.job_id, row.artifact_name):
        return False
    if row.checkpoint is None:
        return True
    found = named_checkpoint(row.job_id, row.checkpoint)
    return found is not None and found.created_at <= row.created_at


def reusable_export(session: Session, job_id: int, data: ExportCreate) -> Export | None:
    """The same export, queued, running or done with its zip still there; a failed one is tried again."""
    same = (
        Export.checkpoint.is_(None) if data.checkpoint is None else Export.checkpoint == data.checkpoint,
        Export.format == data.format,
        Export.dtype == data.stored_dtype,
    )
    q = select(Export).where(Export.job_id == job_id, *same, Export.status.in_((*ACTIVE, "done")))
    for row in session.scalars(q.order_by(Export.id.desc())):
        if row.status in ACTIVE or _still_current(session, row):
            return row
    return None


def create_export(session: Session, *, user: User, job_id: int, data: ExportCreate) -> tuple[Export, bool]:
    """(export, created): a queued export (the caller commits, then enqueues it), or the identical one that is
    already under way or done."""
    job = get_job(session, user=user, job_id=job_id)
    target = export_target(session, job, data.checkpoint)
    check_format(job, target, data.format)
    check_gguf(job, target, data)
    existing = reusable_export(session, job.id, data)
    if existing is not None:
        return existing, False
    row = Export(
        job_id=job.id,
        owner_id=user.id,
        checkpoint=data.checkpoint,
        format=data.format,
        dtype=data.stored_dtype,
        status="queued",
    )
    session.add(row)
    session.flush()
    return row, True


def list_exports(session: Session, job_id: int, limit: int = LIST_LIMIT) -> list[Export]:
    """The job's exports, newest first (whoever asked: they all land among the job's artifacts)."""
    q = select(Export).where(Export.job_id == job_id).order_by(Export.id.desc()).limit(limit)
    return list(session.scalars(q))


def get_export(session: Session, *, user: User, export_id: int) -> Export:
    """The export, if `user` may see its job."""
    row = session.get(Export, export_id)
    if row is None:
        raise NotFound(f"export {export_id} not found")
    try:
        get_job(session, user=user, job_id=row.job_id)
    except NotFound:
        raise NotFound(f"export {export_id} not found") from None
    return row


def to_read(row: Export) -> ExportRead:
    view = ExportRead.model_validate(row)
    if row.status == "done" and row.artifact_name:
        view.url = f"/api/jobs/{row.job_id}/artifacts/{row.artifact_name}"
    return view
