"""A job's checkpoints, as the Trainer writes them, stored under jobs/<id>/checkpoints/checkpoint-<step>/.

One rule says which folders are checkpoints (`is_complete`); the API, the resume and the worker's rollback all
use it. The worker writes each checkpoint into a staging folder and renames it into place once every file is on
disk and the marker is written (`workers.checkpointing`); with remote storage it then stores the folder, the
marker last, so a stored checkpoint is complete exactly when its marker is there.
"""

import json
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from backend.storage import get_cache, get_storage, work_path

PREFIX = "checkpoint-"
# Written last into a checkpoint, after every other file was flushed to disk: the folder is whole.
MARKER = "COMPLETE"
# A checkpoint being written lives under this prefix until it is renamed into place; a crash leaves one behind.
STAGING_PREFIX = ".tmp-"
# The Trainer writes this file last in a checkpoint (it names the step); see is_complete for older checkpoints.
STATE_FILE = "trainer_state.json"


@dataclass(frozen=True)
class Checkpoint:
    name: str
    step: int
    key: str  # jobs/<id>/checkpoints/checkpoint-<step>
    size_bytes: int
    created_at: datetime

    @property
    def path(self) -> Path:
        """A local folder with the checkpoint (its own with local storage, else a cached copy)."""
        return get_cache().tree(self.key)


def checkpoints_key(job_id: int) -> str:
    """Where job `job_id`'s checkpoints are stored."""
    return f"jobs/{job_id}/checkpoints"


def checkpoint_dir(job_id: int) -> Path:
    """The local folder the job's worker writes its checkpoints into (not created here)."""
    return work_path(checkpoints_key(job_id))


def step_of(path: Path) -> int | None:
    """The step in a checkpoint folder's name (checkpoint-40 → 40); None for any other name."""
    suffix = path.name.removeprefix(PREFIX)
    return int(suffix) if path.name.startswith(PREFIX) and suffix.isdigit() else None


def is_complete(path: Path) -> bool:
    """Whether `path` is a whole checkpoint: a checkpoint-<step> folder that carries the marker.

    Checkpoints written before the marker existed have none. They still count when their trainer state, which
    the Trainer writes last, is a readable JSON object, so that older jobs keep resuming; a save cut short before
    that file was whole does not count."""
    if step_of(path) is None or not path.is_dir():
        return False
    if (path / MARKER).is_file():
        return True
    try:
        state = json.loads((path / STATE_FILE).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(state, dict)


def complete_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """(step, folder) of the whole checkpoints in `root`, oldest step first; staging folders never count."""
    if not root.is_dir():
        return []
    found = [(step, path) for path in root.iterdir() if (step := step_of(path)) is not None and is_complete(path)]
    return sorted(found)


def folder_bytes(path: Path) -> int:
    """Bytes in the files under `path`."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def list_checkpoints(job_id: int) -> list[Checkpoint]:
    """Complete checkpoints of the job, oldest step first."""
    prefix = checkpoints_key(job_id)
    local = get_storage().local_path(prefix)
    if local is None:
        return _stored_checkpoints(prefix)
    found = []
    for step, path in complete_checkpoints(local):
        written = path / MARKER if (path / MARKER).is_file() else path / STATE_FILE
        mtime = datetime.fromtimestamp(written.stat().st_mtime, UTC)
        key = f"{prefix}/{path.name}"
        found.append(Checkpoint(name=path.name, step=step, key=key, size_bytes=folder_bytes(path), created_at=mtime))
    return found


def _stored_checkpoints(prefix: str) -> list[Checkpoint]:
    """Checkpoints in remote storage: a checkpoint-<step> folder whose marker is stored (it is stored last)."""
    sizes: dict[str, int] = {}
    marked: dict[str, float] = {}
    for key, (size, mtime) in get_storage().scan(prefix).items():
        name, _, rest = key.removeprefix(f"{prefix}/").partition("/")
        sizes[name] = sizes.get(name, 0) + size
        if rest == MARKER:
            marked[name] = mtime
    found = [
        Checkpoint(
            name=name,
            step=step,
            key=f"{prefix}/{name}",
            size_bytes=sizes[name],
            created_at=datetime.fromtimestamp(mtime, UTC),
        )
        for name, mtime in marked.items()
        if (step := step_of(Path(name))) is not None
    ]
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
    storage = get_storage()
    prefix = checkpoints_key(job_id)
    root = storage.local_path(prefix)
    if root is None:
        names = {key.removeprefix(f"{prefix}/").partition("/")[0] for key in storage.list(prefix)}
        later = sorted(n for n in names if (found := step_of(Path(n))) is not None and found > step)
        for name in later:
            storage.delete_prefix(f"{prefix}/{name}")
        return later
    if not root.is_dir():
        return []
    removed = []
    # Also the incomplete folders past `step`: the Trainer would save into them again and mix old files in.
    for path in sorted(root.iterdir()):
        found = step_of(path)
        if found is not None and found > step and path.is_dir():
            shutil.rmtree(path)
            removed.append(path.name)
    return removed
