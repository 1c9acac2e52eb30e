"""The worker's side of an export: claim the row, read what to package, report progress, record the end.

The claim, the lease and its recovery are `backend.work`'s, as for every kind of background work. Each function
opens and commits its own short session and publishes a wake-up after writing. While an export runs, the worker
renews its lease with its progress every few seconds, even through a silent stage such as loading a large base; an
export whose worker stopped doing so is queued again by the reaper (`recover_export`), and fails once its
attempts are spent.
"""

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from backend.db import Artifact, Export, Job, session_scope, utcnow
from backend.events import publish, publish_export
from backend.export.service import artifact_name, export_target
from backend.job.lifecycle import add_event, file_sha256
from backend.playground.service import Target, job_output_dir, job_output_key
from backend.storage import get_storage
from backend.work import lease
from backend.work.kinds import EXPORT
from backend.work.lease import Expired, Lease, LeaseLost

ERROR_CHARS = 4000


@dataclass(frozen=True)
class ExportSpec:
    """One claimed export: what to read, what to write and where (plain values: the worker holds no session)."""

    export_id: int
    job_id: int
    checkpoint: str | None
    format: str  # adapter | merged | model
    dtype: str  # float32 | float16 | bfloat16
    target: Target
    artifact_name: str
    work_dir: Path  # data_dir/jobs/<job>/exports/<export id>/attempt-<n>: the staging folder, then the zip
    objective: str
    final_loss: float | None
    final_eval_loss: float | None

    @property
    def source(self) -> str:
        return self.checkpoint or "final output"


def exports_dir(job_id: int) -> Path:
    return job_output_dir(job_id) / "exports"


def remove_empty(folder: Path, root: Path) -> None:
    """Remove `folder`, then each folder above it, while they are empty, up to `root` (kept)."""
    while folder != root and folder.is_relative_to(root):
        try:
            folder.rmdir()
        except OSError:  # not empty (or gone)
            return
        folder = folder.parent


def claim_export(export_id: int, worker: str = "worker") -> Lease | None:
    """queued → running for `worker`, atomically: a second delivery of the task finds nothing to claim."""
    with session_scope() as s:
        progress = {"phase": "loading", "done": 0, "total": 0, "unit": "files"}
        won = lease.claim(s, EXPORT, export_id, worker, started_at=lease.db_now(s), progress=progress, error=None)
    if won is not None:
        publish_export(export_id)
    return won


def load_export(export_id: int) -> ExportSpec:
    """Snapshot the export and resolve its weights again (a checkpoint may have gone since the request)."""
    held = lease.held(EXPORT, export_id)
    with session_scope() as s:
        row = s.get(Export, export_id)
        if row is None:
            raise LookupError(f"export {export_id} does not exist")
        job = s.get(Job, row.job_id)
        if job is None:
            raise LookupError(f"job {row.job_id} was deleted")
        # A folder per attempt: a worker that lost the export to a later attempt (it stalled past its lease) may
        # still write and then clean up its own folder, never the zip of the attempt that owns the export now.
        attempt = held.attempt if held is not None else row.attempt
        return ExportSpec(
            export_id=row.id,
            job_id=job.id,
            checkpoint=row.checkpoint,
            format=row.format,
            dtype=row.dtype,
            target=export_target(s, job, row.checkpoint),
            artifact_name=artifact_name(row.checkpoint, row.format, row.dtype),
            work_dir=exports_dir(job.id) / str(row.id) / f"attempt-{attempt}",
            objective=job.objective,
            final_loss=job.final_loss,
            final_eval_loss=job.final_eval_loss,
        )


def record_progress(export_id: int, progress: dict[str, Any]) -> bool:
    """Store where the export is (which renews the worker's lease); False when this worker no longer owns it
    (the reaper took it back), so the worker stops."""
    held = lease.held(EXPORT, export_id)
    with session_scope() as s:
        if held is not None:
            try:
                lease.renew(s, held, progress=progress)
                running = True
            except LeaseLost:
                running = False
        else:
            res = s.execute(
                update(Export)
                .where(Export.id == export_id, Export.status == "running")
                .values(progress=progress, heartbeat_at=lease.db_now(s))
                .execution_options(synchronize_session=False)
            )
            running = res.rowcount == 1  # type: ignore[attr-defined]
    publish_export(export_id)
    return running


def _end(s: Session, export_id: int, status: str, **values: Any) -> bool:
    """running → `status`, by the attempt this process holds (any running one for a caller holding none)."""
    held = lease.held(EXPORT, export_id)
    if held is not None:
        try:
            lease.finish(s, held, status, **values)
            return True
        except LeaseLost:
            return False
    res = s.execute(
        update(Export)
        .where(Export.id == export_id, Export.status == "running")
        .values(status=status, lease_worker=None, **values)
        .execution_options(synchronize_session=False)
    )
    return res.rowcount == 1  # type: ignore[attr-defined]


def finish_export(export_id: int, archive: Path) -> bool:
    """running → done and the zip `archive` among the job's artifacts, in one transaction (replacing an earlier
    export's zip of the same name: the same checkpoint, format and dtype); False, with nothing registered, when
    this worker no longer owns the export (the reaper took it back meanwhile, and a retry may own that name by now)."""
    sha256, size = file_sha256(archive), archive.stat().st_size
    with session_scope() as s:
        row = s.get(Export, export_id)
        job_id = row.job_id if row is not None else 0
    key = f"{job_output_key(job_id)}/{archive.relative_to(job_output_dir(job_id)).as_posix()}"
    storage = get_storage()
    # Stored whole before a row names it. Moved: with remote storage the local zip goes once the bucket has it
    # (with local storage it was built in place, and stays).
    storage.put_file(key, archive, move=True)
    with session_scope() as s:
        row = s.get(Export, export_id)
        finished = row is not None and _end(
            s, export_id, "done", artifact_name=archive.name, size_bytes=size, finished_at=utcnow()
        )
        if not finished or row is None:
            # Reaped meanwhile: no row will ever name this attempt's zip (its key is this attempt's own).
            storage.delete(key)
            return False
        job_id, owner_id = row.job_id, row.owner_id
        same_name = (Artifact.job_id == job_id, Artifact.name == archive.name)
        replaced = list(s.scalars(select(Artifact.path).where(*same_name)))
        s.execute(delete(Artifact).where(*same_name))
        s.add(Artifact(job_id=job_id, owner_id=owner_id, name=archive.name, path=key, size_bytes=size, sha256=sha256))
        add_event(s, job_id, f"export {archive.name} ready ({size / 1e6:.1f} MB)")
    exports = f"{job_output_key(job_id)}/exports/"
    for old in replaced:
        if old != key and old.startswith(exports):  # never a file the training run wrote
            storage.delete(old)
            if (local := storage.local_path(old)) is not None:
                remove_empty(local.parent, exports_dir(job_id))  # the earlier export's folders, now empty
    publish(job_id)
    publish_export(export_id)
    return True


def fail_export(export_id: int, error: str) -> None:
    """running → failed with `error` (the worker already removed what it wrote)."""
    with session_scope() as s:
        _end(s, export_id, "failed", error=error[:ERROR_CHARS], finished_at=utcnow())
    publish_export(export_id)


def recover_export(session: Session, row: Expired, max_attempts: int) -> bool:
    """The worker of a running export was lost: export again on a live worker (True), or fail once the attempts
    are spent. What the dead worker half-wrote goes either way."""
    export = session.get(Export, row.id)
    assert export is not None
    shutil.rmtree(exports_dir(export.job_id) / str(row.id), ignore_errors=True)
    get_storage().delete_prefix(f"{job_output_key(export.job_id)}/exports/{row.id}")
    if row.spent(max_attempts):
        error = (
            f"the worker ({row.lease_worker}) stopped responding while exporting, on {row.last_note(max_attempts)}; "
            "export again"
        )
        lease.give_up(session, EXPORT, row, error=error, finished_at=utcnow())
        return False
    return lease.take_over(session, EXPORT, row, progress=None, started_at=None)
