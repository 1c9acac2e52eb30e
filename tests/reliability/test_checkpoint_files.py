"""Checkpoints are whole or absent: staged, flushed, marked COMPLETE and renamed into place; a folder without the
marker is no checkpoint; leftovers of an interrupted save are cleared; checkpoint_minutes saves on a clock."""

import json
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from pydantic import ValidationError
from transformers import TrainerCallback

from backend.job import lifecycle
from backend.job.checkpoints import (
    MARKER,
    checkpoint_dir,
    is_complete,
    latest_checkpoint,
    list_checkpoints,
)
from backend.job.schemas import Hyperparameters
from tests.workers.conftest import seed, worker_env  # noqa: F401  (the worker tests' database and data folder)
from tests.workers.support import PRETRAIN_HP, Seed, create_job, get_job, messages
from tests.workers.test_training_control import pause_at
from workers import checkpointing, metrics, training
from workers.recipes import pretrain
from workers.tasks import run_job

# No eval until the end and a checkpoint every 2 steps: the shortest run that leaves several checkpoints.
HP = {**PRETRAIN_HP, "max_steps": 6, "eval_steps": 6, "checkpoint_steps": 2, "keep_checkpoints": 2}
# The files the Trainer puts in a full model's checkpoint: resume_from_checkpoint reads them by these names.
TRAINER_FILES = {
    "config.json",
    "model.safetensors",
    "optimizer.pt",
    "scheduler.pt",
    "rng_state.pth",
    "trainer_state.json",
    "training_args.bin",
}


def staged_leftovers(job_id: int) -> list[str]:
    return sorted(p.name for p in checkpoint_dir(job_id).iterdir() if p.name.startswith(".tmp-"))


def assert_whole(path: Path, step: int) -> None:
    """The Trainer's own files, and the marker naming the step."""
    names = {p.name for p in path.iterdir()}
    assert names >= TRAINER_FILES, sorted(names)
    assert json.loads((path / MARKER).read_text())["step"] == step
    assert json.loads((path / "trainer_state.json").read_text())["global_step"] == step
    assert is_complete(path)


@pytest.mark.slow
def test_checkpoints_carry_the_marker_and_a_resume_clears_leftovers(
    seed: Seed,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(metrics, "HEARTBEAT_SECONDS", 0.0)
    job_id = create_job(seed, kind="pretrain", architecture="tiny", hyperparameters=HP)
    pause_at(monkeypatch, 3)  # the pause saves checkpoint-3 besides the interval's checkpoint-2
    assert run_job(job_id) == "paused", messages(job_id)
    assert [c.step for c in list_checkpoints(job_id)] == [2, 3]
    for checkpoint in list_checkpoints(job_id):
        assert_whole(checkpoint.path, checkpoint.step)
    assert staged_leftovers(job_id) == []

    # What a crash mid-save leaves: a staging folder, and (from before staging) a checkpoint cut short.
    root = checkpoint_dir(job_id)
    (root / ".tmp-checkpoint-4-999" / "checkpoint-4").mkdir(parents=True)
    (root / ".tmp-checkpoint-4-999" / "checkpoint-4" / "optimizer.pt").write_bytes(b"\0" * 100)
    (root / "checkpoint-5").mkdir()
    (root / "checkpoint-5" / "model.safetensors").write_bytes(b"\0" * 100)
    latest = latest_checkpoint(job_id)
    assert latest is not None and latest.name == "checkpoint-3"  # neither is a checkpoint

    monkeypatch.setattr(metrics, "beat", lifecycle.beat)
    lifecycle.update_job(job_id, status="queued")  # what POST /resume does
    assert run_job(job_id) == "succeeded", messages(job_id)
    assert "resuming from checkpoint-3" in messages(job_id)
    assert "removed what an interrupted save left: .tmp-checkpoint-4-999, checkpoint-5" in messages(job_id)
    assert [c.step for c in list_checkpoints(job_id)] == [4, 6]  # keep_checkpoints rotated the older ones out
    for checkpoint in list_checkpoints(job_id):
        assert_whole(checkpoint.path, checkpoint.step)
    assert sorted(p.name for p in root.iterdir()) == ["checkpoint-4", "checkpoint-6"]
    assert get_job(job_id).current_step == 6


def test_a_folder_without_the_marker_is_no_checkpoint(seed: Seed) -> None:  # noqa: F811
    job_id = 990_001  # only its folder is needed
    root = checkpoint_dir(job_id)

    def folder(name: str, files: dict[str, bytes]) -> Path:
        path = root / name
        path.mkdir(parents=True)
        for file, data in files.items():
            (path / file).write_bytes(data)
        return path

    folder("checkpoint-10", {"model.safetensors": b"w", MARKER: b'{"step": 10}'})
    # Written before markers existed: the Trainer's last file is there and whole, so it still counts.
    folder("checkpoint-20", {"model.safetensors": b"w", "trainer_state.json": b'{"global_step": 20}'})
    folder("checkpoint-30", {"model.safetensors": b"w"})  # cut short
    folder("checkpoint-40", {"model.safetensors": b"w", "trainer_state.json": b'{"global_st'})  # cut mid-file
    folder(".tmp-checkpoint-50-1/checkpoint-50", {MARKER: b'{"step": 50}'})  # not yet renamed into place
    assert [c.name for c in list_checkpoints(job_id)] == ["checkpoint-10", "checkpoint-20"]
    latest = latest_checkpoint(job_id)
    assert latest is not None and latest.name == "checkpoint-20"

    removed = checkpointing.remove_leftovers(root)
    assert removed == [".tmp-checkpoint-50-1", "checkpoint-30", "checkpoint-40"]
    assert sorted(p.name for p in root.iterdir()) == ["checkpoint-10", "checkpoint-20"]


def test_publish_replaces_an_earlier_attempts_checkpoint(tmp_path: Path) -> None:
    old = tmp_path / "checkpoint-8"
    old.mkdir()
    (old / "optimizer.pt").write_bytes(b"old")
    (old / "stale.bin").write_bytes(b"from the abandoned attempt")
    staged = tmp_path / ".tmp-checkpoint-8-1" / "checkpoint-8"
    staged.mkdir(parents=True)
    (staged / "optimizer.pt").write_bytes(b"new")
    checkpointing.write_marker(staged, 8)
    checkpointing.publish(staged, old)
    assert sorted(p.name for p in old.iterdir()) == [MARKER, "optimizer.pt"]
    assert (old / "optimizer.pt").read_bytes() == b"new"
    # The staging folder is left empty, for the caller to remove.
    assert sorted(p.name for p in tmp_path.iterdir()) == [".tmp-checkpoint-8-1", "checkpoint-8"]


# --- checkpoint_minutes ----------------------------------------------------------------------------------------


def test_checkpoint_minutes_bounds() -> None:
    assert Hyperparameters().checkpoint_minutes == 15.0
    assert Hyperparameters(checkpoint_minutes=0).checkpoint_minutes == 0
    assert Hyperparameters(checkpoint_minutes=None).checkpoint_minutes is None
    for bad in (-1, 10_081):
        with pytest.raises(ValidationError, match="checkpoint_minutes"):
            Hyperparameters(checkpoint_minutes=bad)


class SlowSteps(TrainerCallback):
    """Makes every step last at least 0.1 s, longer than the 0.06 s of checkpoint_minutes=0.001."""

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        time.sleep(0.1)


@pytest.mark.slow
@pytest.mark.parametrize(("minutes", "steps"), [(0.001, [1, 2, 3, 4]), (0, [4]), (None, [4])])
def test_checkpoint_minutes_saves_on_the_clock(
    seed: Seed,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    minutes: float | None,
    steps: list[int],
) -> None:
    def slowed(*args: Any, **kwargs: Any) -> Any:
        trainer, callback = training.build_trainer(*args, **kwargs)
        trainer.add_callback(SlowSteps())
        return trainer, callback

    monkeypatch.setattr(pretrain, "build_trainer", slowed)
    # No checkpoint_steps: the Trainer's own interval never fires, only the end of the run saves.
    hp = {**PRETRAIN_HP, "max_steps": 4, "eval_steps": 4, "keep_checkpoints": 10, "checkpoint_minutes": minutes}
    job_id = create_job(seed, kind="pretrain", architecture="tiny", hyperparameters=hp)
    assert run_job(job_id) == "succeeded", messages(job_id)
    assert [c.step for c in list_checkpoints(job_id)] == steps
    last = list_checkpoints(job_id)[-1].path
    assert torch.load(last / "optimizer.pt", weights_only=True)["state"]  # a real checkpoint, loadable
