"""The worker's side of an export: claim the row, read what to package, report progress, record the end.

Each function opens and commits its own short session and publishes a wake-up after writing. While an export
runs, the worker refreshes `progress["at"]` (the database's clock) every few seconds, even through a silent
stage such as loading a large base; the API's reaper fails an export whose worker stopped doing so.
"""

import contextlib
import shutil
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import delete, select, update

from backend.config import get_settings
from backend.db import Artifact, Export, Job, session_scope, utcnow
from backend.events import publish, publish_export
from backend.export.service import BEAT_KEY, artifact_name, export_target
from backend.job.lifecycle import add_event, db_now, file_sha256
from backend.playground.service import Target, job_output_dir

ERROR_CHARS = 4000
# Queued this long and never claimed: no analysis worker is consuming (exports run on the analysis queue).
QUEUED_TIMEOUT = timedelta(hours=6)


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
    work_dir: Path  # data_dir/jobs/<job>/exports/<export id>: the staging folder, then the zip
    objective: str
    final_loss: float | None
    final_eval_loss: float | None

    @property
    def source(self) -> str:
        return self.checkpoint or "final output"


def exports_dir(job_id: int) -> Path:
    return job_output_dir(job_id) / "exports"


def claim_export(export_id: int) -> bool:
    """queued → running, atomically: a second delivery of the task finds nothing to claim."""
    with session_scope() as s:
        now = db_now(s)
        progress = {"phase": "loading", "done": 0, "total": 0, "unit": "files", BEAT_KEY: now.isoformat()}
        claimed = s.execute(
            update(Export)
            .where(Export.id == export_id, Export.status == "queued")
            .values(status="running", started_at=now, progress=progress)
            .execution_options(synchronize_session=False)
        )
        won = claimed.rowcount == 1  # type: ignore[attr-defined]
    if won:
        publish_export(export_id)
    return won


def load_export(export_id: int) -> ExportSpec:
    """Snapshot the export and resolve its weights again (a checkpoint may have gone since the request)."""
    with session_scope() as s:
        row = s.get(Export, export_id)
        if row is None:
            raise LookupError(f"export {export_id} does not exist")
        job = s.get(Job, row.job_id)
        if job is None:
            raise LookupError(f"job {row.job_id} was deleted")
        return ExportSpec(
            export_id=row.id,
            job_id=job.id,
            checkpoint=row.checkpoint,
            format=row.format,
            dtype=row.dtype,
            target=export_target(s, job, row.checkpoint),
            artifact_name=artifact_name(row.checkpoint, row.format, row.dtype),
            work_dir=exports_dir(job.id) / str(row.id),
            objective=job.objective,
            final_loss=job.final_loss,
            final_eval_loss=job.final_eval_loss,
        )


def record_progress(export_id: int, progress: dict[str, Any]) -> bool:
    """Store where the export is (and that its worker lives); False when it is no longer running (the reaper
    failed it), so the worker stops."""
    with session_scope() as s:
        values = {**progress, BEAT_KEY: db_now(s).isoformat()}
        res = s.execute(
            update(Export)
            .where(Export.id == export_id, Export.status == "running")
            .values(progress=values)
            .execution_options(synchronize_session=False)
        )
        running = res.rowcount == 1  # type: ignore[attr-defined]
    publish_export(export_id)
    return running


def finish_export(export_id: int, archive: Path) -> bool:
    """running → done and the zip `archive` among the job's artifacts, in one transaction (replacing an earlier
    export's zip of the same name: the same checkpoint, format and dtype); False, with nothing registered, when
    the export is no longer running (the reaper failed it meanwhile, and a retry may own that name by now)."""
    sha256, size = file_sha256(archive), archive.stat().st_size
    with session_scope() as s:
        row = s.get(Export, export_id)
        finished = row is not None and (
            s.execute(
                update(Export)
                .where(Export.id == export_id, Export.status == "running")
                .values(status="done", artifact_name=archive.name, size_bytes=size, finished_at=utcnow())
                .execution_options(synchronize_session=False)
            ).rowcount  # type: ignore[attr-defined]
            == 1
        )
        if not finished or row is None:
            return False
        job_id, owner_id = row.job_id, row.owner_id
        same_name = (Artifact.job_id == job_id, Artifact.name == archive.name)
        replaced = [Path(p) for p in s.scalars(select(Artifact.path).where(*same_name))]
        s.execute(delete(Artifact).where(*same_name))
        s.add(
            Artifact(
                job_id=job_id, owner_id=owner_id, name=archive.name, path=str(archive), size_bytes=size, sha256=sha256
            )
        )
        add_event(s, job_id, f"export {archive.name} ready ({size / 1e6:.1f} MB)")
    for path in replaced:
        if path != archive and path.is_relative_to(exports_dir(job_id)):  # never a file the training run wrote
            path.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                path.parent.rmdir()  # the earlier export's folder, now empty
    publish(job_id)
    publish_export(export_id)
    return True


def fail_export(export_id: int, error: str) -> None:
    """running → failed with `error` (the worker already removed what it wrote)."""
    with session_scope() as s:
        s.execute(
            update(Export)
            .where(Export.id == export_id, Export.status == "running")
            .values(status="failed", error=error[:ERROR_CHARS], finished_at=utcnow())
            .execution_options(synchronize_session=False)
        )
    publish_export(export_id)


def _last_beat(progress: dict[str, Any] | None, started_at: datetime | None) -> datetime | None:
    try:
        return datetime.fromisoformat(str((progress or {})[BEAT_KEY]))
    except (KeyError, ValueError):
        return started_at


def _stale_reason(row: Any, now: datetime, lease: timedelta) -> str | None:
    if row.status == "running":
        beat = _last_beat(row.progress, row.started_at)
        if beat is None or beat < now - lease:
            return (
                f"the worker stopped responding while exporting (no sign of life for {int(lease.total_seconds())} s); "
                "export again"
            )
    elif row.created_at < now - QUEUED_TIMEOUT:
        hours = int(QUEUED_TIMEOUT.total_seconds() // 3600)
        return f"no worker picked this export up within {hours} hours; is the analysis worker running?"
    return None


def reap_stale_exports() -> list[int]:
    """Fail exports whose worker died mid-way (no beat within the lease) or that no worker ever took; their ids."""
    lease = timedelta(seconds=get_settings().lease_seconds)
    with session_scope() as s:
        now = db_now(s)
        cols = (Export.id, Export.job_id, Export.status, Export.progress, Export.started_at, Export.created_at)
        rows = s.execute(select(*cols).where(Export.status.in_(("queued", "running")))).all()
        reaped: dict[int, int] = {}  # export id → job id
        for row in rows:
            reason = _stale_reason(row, now, lease)
            if reason is None:
                continue
            res = s.execute(
                update(Export)
                .where(Export.id == row.id, Export.status == row.status)
                .values(status="failed", error=reason, finished_at=utcnow())
                .execution_options(synchronize_session=False)
            )
            if res.rowcount == 1:  # type: ignore[attr-defined]
                reaped[row.id] = row.job_id
    for export_id, job_id in reaped.items():
        shutil.rmtree(exports_dir(job_id) / str(export_id), ignore_errors=True)  # what the dead worker left
        publish_export(export_id)
    return list(reaped)
