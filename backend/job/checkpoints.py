"""A job's checkpoints on disk, as the Trainer writes them: data_dir/jobs/<id>/checkpoints/checkpoint-<step>/."""

import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from backend.config import get_settings

PREFIX = "checkpoint-"
# The Trainer writes this file last in a checkpoint: a folder without it was cut short (a crash mid-save).
STATE_FILE = "trainer_state.json"


@dataclass(frozen=True)
class Checkpoint:
    name: str
    step: int
    path: Path
    size_bytes: int
    created_at: datetime


def checkpoint_dir(job_id: int) -> Path:
    """Where job `job_id`'s checkpoints go (not created here)."""
    return get_settings().data_dir / "jobs" / str(job_id) / "checkpoints"


def _step(path: Path) -> int | None:
    suffix = path.name.removeprefix(PREFIX)
    return int(suffix) if path.name.startswith(PREFIX) and suffix.isdigit() else None


def list_checkpoints(job_id: int) -> list[Checkpoint]:
    """Complete checkpoints of the job, oldest step first."""
    root = checkpoint_dir(job_id)
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        step = _step(path)
        if step is None or not (path / STATE_FILE).is_file():
            continue
        size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        mtime = datetime.fromtimestamp((path / STATE_FILE).stat().st_mtime, UTC)
        found.append(Checkpoint(name=path.name, step=step, path=path, size_bytes=size, created_at=mtime))
    return sorted(found, key=lambda c: c.step)


def latest_checkpoint(job_id: int) -> Checkpoint | None:
    """The checkpoint a resume starts from: the one with the highest step."""
    found = list_checkpoints(job_id)
    return found[-1] if found else None


def named_checkpoint(job_id: int, name: str) -> Checkpoint | None:
    """The complete checkpoint called `name` (e.g. checkpoint-40), if the job has it."""
    return next((c for c in list_checkpoints(job_id) if c.name == name), None)


def remove_checkpoints_after(job_id: int, step: int) -> list[str]:
    """Delete the checkpoints past `step` (a resume from an older one abandons them); their names."""
    root = checkpoint_dir(job_id)
    if not root.is_dir():
        return []
    removed = []
    # Also the incomplete folders past `step`: the Trainer would save into them again and mix old files in.
    for path in sorted(root.iterdir()):
        found = _step(path)
        if found is not None and found > step and path.is_dir():
            shutil.rmtree(path)
            removed.append(path.name)
    return removed
