"""Checkpoints that are whole or absent: staged, flushed to disk, marked, then renamed into place.

The Trainer writes a checkpoint file by file into checkpoint-<step>/. A crash, a full disk or a power cut in the
middle leaves a folder that looks like a checkpoint but holds a truncated optimizer or weights file; a resume from
it fails, or loads garbage. So the Trainer writes into <checkpoints>/.tmp-checkpoint-<step>-<pid>/checkpoint-<step>/
instead (`MeteredTrainer._get_output_dir`), keeping its own layout inside. Then every file and folder is fsynced,
the COMPLETE marker is written last, and one rename on the same filesystem puts the folder in place: readers
(`backend.job.checkpoints.is_complete`) see the whole checkpoint or none of it.

Before each save the free space is checked against the checkpoint's expected size; a checkpoint that cannot fit
is not started, and one whose write fails for lack of space has its partial folder removed. Either way the job
fails with `DiskFull`, and the checkpoints already on disk stay as they were.

Data parallel: every rank runs the Trainer's save (each writes its own rng_state_<rank>.pth, and the save holds
collectives), so the staging folder is named by rank 0 and the ranks agree on each outcome. Rank 0 alone (the
Trainer's `should_save`) checks the space, flushes, marks, renames and rotates.
"""

import errno
import json
import math
import os
import shutil
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from peft import PeftModel
from torch import nn

from backend.job.checkpoints import (
    MARKER,
    PREFIX,
    STAGING_PREFIX,
    complete_checkpoints,
    folder_bytes,
    is_complete,
    step_of,
)
from backend.storage import get_storage, stored_key_of_work
from workers.ranks import any_rank, share

MB = 1_000_000
# Headroom over the estimate: the trainer state grows with the log history, and filesystems round files up to
# whole blocks. A checkpoint must fit with this much to spare, so the disk is never filled to its last byte.
SLACK = 1.1
# On the first save there is no earlier checkpoint to measure: what the weights and optimizer state do not cover
# (tokenizer files, config, trainer state, RNG state) is rarely more than this.
FIRST_SAVE_EXTRA = 16 * 2**20
# After a failed write, less than this free (or less than the rest of the checkpoint) means the disk was full,
# whatever the error said: torch reports a short write as RuntimeError ("unexpected pos"), safetensors as its own.
FULL_BELOW = 16 * 2**20
FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


class DiskFull(Exception):
    """A checkpoint does not fit on the disk. The job fails with this message; earlier checkpoints are intact."""

    def __init__(self, name: str, needed: int, free: int) -> None:
        super().__init__(
            f"no space left on device writing {name} "
            f"(needs ~{math.ceil(needed / MB)} MB, {math.floor(max(free, 0) / MB)} MB free)"
        )
        self.name, self.needed, self.free = name, needed, free


def free_bytes(path: Path) -> int:
    """Bytes this process may still write on `path`'s filesystem."""
    return shutil.disk_usage(path).free


def estimate_bytes(root: Path, model: nn.Module) -> int:
    """Bytes the next checkpoint in `root` will take: as much as the last one (the same files again), or on the
    first save the weights the model saves plus AdamW's two moments per trainable weight."""
    previous = complete_checkpoints(root)
    if previous:
        return folder_bytes(previous[-1][1])
    trainable = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    # A PEFT model saves its adapter (the trainable weights) only; any other model saves all of them.
    saved = trainable if isinstance(model, PeftModel) else sum(p.numel() * p.element_size() for p in model.parameters())
    return saved + 2 * trainable + FIRST_SAVE_EXTRA


def remove_leftovers(root: Path) -> list[str]:
    """Delete what interrupted saves left in `root`: staging folders, and checkpoint folders that are not whole
    (cut short before checkpoints were staged). Their names."""
    if not root.is_dir():
        return []
    removed = []
    for path in sorted(root.iterdir()):
        stale = path.name.startswith(STAGING_PREFIX) or (step_of(path) is not None and not is_complete(path))
        if stale and path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path.name)
    return removed


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)  # a read-only descriptor flushes a file's pages and a folder's entries alike
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(folder: Path) -> None:
    """Flush every file under `folder` to the disk, then the folders (their entries), deepest first."""
    for dirpath, _dirs, files in os.walk(folder, topdown=False):
        for name in files:
            _fsync(Path(dirpath) / name)
        _fsync(Path(dirpath))


def write_marker(folder: Path, step: int) -> None:
    """Write the COMPLETE marker into `folder` (step and time, as JSON) and flush it and the folder."""
    with open(folder / MARKER, "w") as out:
        out.write(json.dumps({"step": step, "time": datetime.now(UTC).isoformat()}))
        out.flush()
        os.fsync(out.fileno())
    _fsync(folder)


def publish(staged: Path, final: Path) -> None:
    """Move the whole checkpoint `staged` to `final` in one rename; a folder already called `final` (an earlier
    attempt that reached the same step) is set aside first and deleted once the new one is in place."""
    root = final.parent
    replaced = None
    if final.exists():
        # A rename cannot land on a non-empty folder. Between these two renames `final` is briefly absent, never
        # half-written; a crash there leaves both under staging names, for remove_leftovers.
        replaced = root / f"{STAGING_PREFIX}replaced-{final.name}-{os.getpid()}"
        os.rename(final, replaced)
    os.rename(staged, final)
    _fsync(root)  # the rename itself reaches the disk
    if replaced is not None:
        shutil.rmtree(replaced, ignore_errors=True)
    if (key := stored_key_of_work(final)) is not None:
        # Remote storage: the whole checkpoint is stored now, its marker last, so a reader (the API's list, a
        # resume on another machine) that sees the marker finds every file.
        get_storage().put_tree(key, final, last=(MARKER,))


def _full(error: BaseException | None, free: int, remaining: int) -> bool:
    """Whether a failed write failed for lack of space: an ENOSPC anywhere in the error's chain, or a disk that
    is (nearly) full now that it failed."""
    while error is not None:
        if isinstance(error, OSError) and error.errno in FULL_ERRNOS:
            return True
        error = error.__cause__ or error.__context__
    return free < max(remaining, FULL_BELOW)


def save_whole(
    root: Path,
    step: int,
    write: Callable[[Path], None],
    *,
    model: nn.Module,
    writer: bool,
    rotate: Callable[[], None],
) -> None:
    """Save checkpoint-<step> into `root` whole or not at all: `write(run_dir)` is the Trainer's own save into
    `run_dir`/checkpoint-<step>; `rotate()` deletes the checkpoints past `save_total_limit` afterwards.

    Called on every rank (`writer`: rank 0); raises DiskFull when it does not fit, or the save's own error."""
    name = f"{PREFIX}{step}"
    pid, needed, refused = os.getpid(), 0, None
    if writer:
        root.mkdir(parents=True, exist_ok=True)
        remove_leftovers(root)  # before measuring: a crashed save's partial folder holds space too
        needed = math.ceil(estimate_bytes(root, model) * SLACK)
        free = free_bytes(root)
        if free < needed:
            refused = (needed, free)
    pid, refused = share((pid, refused))
    if refused is not None:
        raise DiskFull(name, *refused)

    staging = root / f"{STAGING_PREFIX}{name}-{pid}"
    error: Exception | None = None
    try:
        write(staging)
    except Exception as exc:  # judged below, once every rank has finished writing
        error = exc
    failed = any_rank(error is not None)
    outcome: tuple[str, int, int] | None = None
    if writer:
        if not failed:
            try:
                fsync_tree(staging / name)
                write_marker(staging / name, step)
                publish(staging / name, root / name)
            except Exception as exc:  # fsync can report a full disk too (delayed allocation)
                error, failed = exc, True
        if failed:
            outcome = _abandon(staging, error, needed)
        else:
            shutil.rmtree(staging, ignore_errors=True)  # the empty folder the checkpoint was renamed out of
            before = _checkpoint_names(root)
            rotate()
            _forget_stored(root, before - _checkpoint_names(root))
    outcome = share(outcome)
    if outcome is None:
        return
    kind, needed, free = outcome
    if kind == "full":
        raise DiskFull(name, needed, free) from error
    if error is not None:
        raise error
    raise RuntimeError(f"another data-parallel process failed writing {name}")


def _checkpoint_names(root: Path) -> set[str]:
    return {path.name for path in root.iterdir() if step_of(path) is not None}


def _forget_stored(root: Path, names: set[str]) -> None:
    """Remote storage: delete the stored copies of the checkpoints the Trainer just rotated out of `root`."""
    if names and (key := stored_key_of_work(root)) is not None:
        for name in names:
            get_storage().delete_prefix(f"{key}/{name}")


def _abandon(staging: Path, error: Exception | None, needed: int) -> tuple[str, int, int]:
    """Remove a failed save's partial folder; say whether it failed for lack of space: ("full" or "error",
    bytes needed, bytes free)."""
    # The traceback keeps the failed writer's frames, and with them its open file: deleting that file would not
    # give its space back until the exception is gone. Their locals go; the lines stay for the job's events.
    cause: BaseException | None = error
    while cause is not None:
        traceback.clear_frames(cause.__traceback__)
        cause = cause.__cause__ or cause.__context__
    written = folder_bytes(staging) if staging.exists() else 0
    full = _full(error, free_bytes(staging.parent), needed - written)
    shutil.rmtree(staging, ignore_errors=True)
    # What the user must make room for: at least what the failed write already took.
    return ("full" if full else "error", max(needed, written), free_bytes(staging.parent))
