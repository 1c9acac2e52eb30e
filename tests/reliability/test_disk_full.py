"""A checkpoint that does not fit fails the job with a clear message, leaves no partial folder and keeps the
previous checkpoint whole and resumable: refused up front by the free-space check, or cut short by ENOSPC
(faked, and for real on a small tmpfs when this machine lets the test mount one)."""

import errno
import hashlib
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from backend.job import lifecycle
from backend.job.checkpoints import checkpoint_dir, list_checkpoints
from tests.workers.conftest import seed, worker_env  # noqa: F401  (the worker tests' database and data folder)
from tests.workers.support import PRETRAIN_HP, Seed, create_job, get_job, messages
from workers import checkpointing
from workers.tasks import run_job

# Faults injected for real: the second CI step (make test-slow).
pytestmark = pytest.mark.slow

HP = {**PRETRAIN_HP, "max_steps": 6, "eval_steps": 6, "checkpoint_steps": 2, "keep_checkpoints": 2}
MESSAGE = re.compile(r"no space left on device writing checkpoint-(\d+) \(needs ~(\d+) MB, (\d+) MB free\)")


def digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def assert_failed_at_4_with_2_intact(job_id: int, before: dict[str, str] | None = None) -> re.Match[str]:
    """The job failed saving checkpoint-4 with the message; checkpoint-2 is all that is on disk."""
    job = get_job(job_id)
    assert job.status == "failed", messages(job_id)
    assert job.error is not None
    match = MESSAGE.fullmatch(job.error)
    assert match and match.group(1) == "4", job.error
    assert any(m.startswith(f"failed: DiskFull: {job.error}") for m in messages(job_id)), messages(job_id)
    assert [p.name for p in checkpoint_dir(job_id).iterdir()] == ["checkpoint-2"]  # no .tmp-*, no checkpoint-4
    if before is not None:
        assert digest(checkpoint_dir(job_id) / "checkpoint-2") == before
    return match


def resume_to_the_end(job_id: int) -> None:
    """Resume from the kept checkpoint, as POST /resume does, and finish."""
    checkpoint = list_checkpoints(job_id)[-1]
    lifecycle.update_job(job_id, status="queued", error=None, resume_checkpoint=str(checkpoint.path))
    assert run_job(job_id) == "succeeded", messages(job_id)
    assert "resuming from checkpoint-2" in messages(job_id)
    assert [c.step for c in list_checkpoints(job_id)] == [4, 6]


def record_checkpoint_2(monkeypatch: pytest.MonkeyPatch, job_id: int) -> dict[str, dict[str, str]]:
    """Digest of checkpoint-2 taken just after it was published (filled in during the run)."""
    seen: dict[str, dict[str, str]] = {}
    real_publish = checkpointing.publish

    def publish(staged: Path, final: Path) -> None:
        real_publish(staged, final)
        if final.name == "checkpoint-2":
            seen["checkpoint-2"] = digest(final)

    monkeypatch.setattr(checkpointing, "publish", publish)
    return seen


def test_enospc_mid_save_fails_the_job_and_keeps_the_previous_checkpoint(
    seed: Seed,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    job_id = create_job(seed, kind="pretrain", architecture="tiny", hyperparameters=HP)
    seen = record_checkpoint_2(monkeypatch, job_id)
    real_save = torch.save

    def save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        # The second checkpoint's optimizer state gets a few bytes in before the disk is "full".
        if str(f).endswith("optimizer.pt") and "checkpoint-4" in str(f):
            Path(f).write_bytes(b"\x50\x4b" * 1000)
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    assert run_job(job_id) == "failed"
    assert_failed_at_4_with_2_intact(job_id, seen["checkpoint-2"])
    monkeypatch.setattr(torch, "save", real_save)
    resume_to_the_end(job_id)


def test_the_free_space_check_refuses_a_checkpoint_that_cannot_fit(
    seed: Seed,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    job_id = create_job(seed, kind="pretrain", architecture="tiny", hyperparameters=HP)
    seen = record_checkpoint_2(monkeypatch, job_id)
    # Plenty of room for the first checkpoint; 3 MB once it is on disk (less than a tiny model's checkpoint).
    monkeypatch.setattr(checkpointing, "free_bytes", lambda path: 3_000_000 if list_checkpoints(job_id) else 10**12)
    assert run_job(job_id) == "failed"
    match = assert_failed_at_4_with_2_intact(job_id, seen["checkpoint-2"])
    size = list_checkpoints(job_id)[0].size_bytes
    # The estimate is the last checkpoint's size with 10% to spare; the free space is what the disk reported.
    assert int(match.group(2)) == -(-int(size * checkpointing.SLACK) // 1_000_000) and match.group(3) == "3"
    monkeypatch.undo()
    resume_to_the_end(job_id)


@pytest.fixture
def small_disk(seed: Seed) -> Iterator[tuple[int, Path]]:  # noqa: F811
    """A job whose folder is a 48 MB tmpfs (a tiny model's checkpoint takes ~8 MB)."""
    job_id = create_job(seed, kind="pretrain", architecture="tiny", hyperparameters=HP)
    folder = seed.data_dir / "jobs" / str(job_id)
    folder.mkdir(parents=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(folder)], capture_output=True, check=False
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode(errors='replace').strip()}")
    try:
        yield job_id, folder
    finally:
        # Lazily: a file a failed assertion's traceback still holds open would keep the mount busy.
        subprocess.run(["umount", "--lazy", str(folder)], check=False)


def fill_after_checkpoint_2(monkeypatch: pytest.MonkeyPatch, folder: Path, leave: int) -> Path:
    """Once checkpoint-2 is on disk, fill the disk with a ballast file up to `leave` bytes free."""
    ballast = folder / "ballast"
    real_publish = checkpointing.publish

    def publish(staged: Path, final: Path) -> None:
        real_publish(staged, final)
        if final.name == "checkpoint-2":
            fd = os.open(ballast, os.O_WRONLY | os.O_CREAT)
            try:
                os.posix_fallocate(fd, 0, shutil.disk_usage(folder).free - leave)
            finally:
                os.close(fd)

    monkeypatch.setattr(checkpointing, "publish", publish)
    return ballast


@pytest.mark.parametrize("how", ["refused", "cut short"])
def test_a_real_full_disk(small_disk: tuple[int, Path], monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    job_id, folder = small_disk
    ballast = fill_after_checkpoint_2(monkeypatch, folder, leave=4_000_000)
    if how == "cut short":
        # The check passes whatever the disk holds, so the write itself meets the full disk: the weights fit,
        # the optimizer state does not (torch says RuntimeError, not ENOSPC; the free space tells).
        monkeypatch.setattr(checkpointing, "estimate_bytes", lambda root, model: 1)
    assert run_job(job_id) == "failed"
    match = assert_failed_at_4_with_2_intact(job_id)
    needs, free = int(match.group(2)), int(match.group(3))
    assert 3 <= free <= 4 and needs >= free  # the partial folder's space came back
    if how == "refused":
        assert needs == -(-int(list_checkpoints(job_id)[0].size_bytes * checkpointing.SLACK) // 1_000_000)
    monkeypatch.undo()
    ballast.unlink()  # make room, as a person would, and resume on the same disk
    resume_to_the_end(job_id)
