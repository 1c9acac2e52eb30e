"""How a job ends: cancelled on request, failed with its reason, and a second delivery that does nothing."""

import shutil
import threading
import time
from pathlib import Path

from sqlalchemy import select, update

from backend.db import Artifact, Job, JobEvent, JobMetric, Model, session_scope
from backend.job.lifecycle import claim_job
from tests.workers.support import Pretrained, Seed, create_job, get_job
from workers.tasks import run_job


def events(job_id: int) -> list[tuple[str, str]]:
    with session_scope() as s:
        rows = s.scalars(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id))
        return [(e.level, e.message) for e in rows]


def cancel_when_running(job_id: int, timeout: float = 60.0) -> None:
    """What the web app does on "Cancel": set the flag once the job has started training."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if get_job(job_id).current_step > 0:
            with session_scope() as s:
                s.execute(update(Job).where(Job.id == job_id).values(cancel_requested=True))
            return
        time.sleep(0.05)


def test_cancel_requested_while_running_ends_cancelled(seed: Seed) -> None:
    hp = {"max_steps": 100_000, "max_length": 32, "batch_size": 2, "validation_fraction": 0.0}
    job_id = create_job(seed, kind="pretrain", architecture="tiny", hyperparameters=hp)
    canceller = threading.Thread(target=cancel_when_running, args=(job_id,))
    canceller.start()
    started = time.monotonic()
    status = run_job(job_id)
    canceller.join()

    assert status == "cancelled"
    assert time.monotonic() - started < 30
    job = get_job(job_id)
    assert job.status == "cancelled" and job.finished_at is not None
    assert 0 < job.current_step < hp["max_steps"]
    assert events(job_id)[-1] == ("info", "job cancelled")
    with session_scope() as s:
        assert s.scalars(select(Artifact).where(Artifact.job_id == job_id)).first() is None


def test_missing_base_model_fails_the_job_and_says_why(seed: Seed, pretrained: Pretrained, tmp_path: Path) -> None:
    doomed = tmp_path / "doomed-model"
    shutil.copytree(pretrained.model_path, doomed)
    with session_scope() as s:
        model = Model(owner_id=seed.user_id, name="doomed", source="local", path=str(doomed))
        s.add(model)
        s.flush()
        model_id = model.id
    shutil.rmtree(doomed)
    job_id = create_job(
        seed,
        kind="finetune",
        method="lora",
        objective="sft",
        dataset_id=seed.alpaca_dataset_id,
        base_model_id=model_id,
        hyperparameters={"max_steps": 2},
    )

    assert run_job(job_id) == "failed"  # returns normally: the worker goes on serving
    job = get_job(job_id)
    assert job.status == "failed" and job.error
    log = events(job_id)
    level, message = log[-1]
    assert level == "error" and message.startswith("failed: ") and job.error in message
    assert any(level == "error" and "Traceback" in msg for level, msg in log[:-1])


def test_unknown_preset_fails_before_training(seed: Seed) -> None:
    job_id = create_job(seed, kind="pretrain", architecture="enormous", hyperparameters={"max_steps": 2})
    assert run_job(job_id) == "failed"
    assert "enormous" in (get_job(job_id).error or "")


def test_second_delivery_is_a_no_op(seed: Seed) -> None:
    job_id = create_job(seed, kind="pretrain", architecture="tiny", hyperparameters={"max_steps": 2})
    assert claim_job(job_id, "first-worker")
    before = events(job_id)

    assert run_job(job_id) == "skipped"
    job = get_job(job_id)
    assert (job.status, job.worker) == ("running", "first-worker")
    assert events(job_id) == before
    with session_scope() as s:
        assert s.scalars(select(JobMetric).where(JobMetric.job_id == job_id)).first() is None


def test_finished_job_is_not_run_again(pretrained: Pretrained) -> None:
    before = events(pretrained.job_id)
    assert run_job(pretrained.job_id) == "skipped"
    assert get_job(pretrained.job_id).status == "succeeded"
    assert events(pretrained.job_id) == before
