"""The job callback writes logged points in batches: a fast run's steps share one transaction a second, while an
evaluation, a checkpoint and the end of training write at once, with the latest losses on the job row."""

from pathlib import Path

import pytest
from sqlalchemy import select
from transformers import TrainerControl, TrainerState, TrainingArguments

from backend.db import JobMetric, session_scope
from tests.workers.support import Seed, create_job, get_job
from workers import metrics
from workers.metrics import JobCallback


def stored(job_id: int) -> list[int]:
    with session_scope() as s:
        return list(s.scalars(select(JobMetric.step).where(JobMetric.job_id == job_id).order_by(JobMetric.step)))


def test_points_wait_for_the_interval_an_eval_or_the_end(
    seed: Seed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id = create_job(seed, kind="pretrain", architecture="tiny", status="running")
    callback = JobCallback(job_id)
    args, state, control = TrainingArguments(output_dir=str(tmp_path)), TrainerState(max_steps=10), TrainerControl()

    def log(step: int, **values: float) -> None:
        state.global_step = step
        callback.on_log(args, state, control, logs=values)

    monkeypatch.setattr(metrics, "METRIC_WRITE_SECONDS", 3600.0)
    log(1, loss=2.0)
    log(2, loss=1.5)
    assert stored(job_id) == []  # within the interval: kept in memory
    log(2, eval_loss=1.8)
    assert stored(job_id) == [1, 2, 2]  # an evaluation writes what waited, and itself
    assert (get_job(job_id).final_loss, get_job(job_id).final_eval_loss) == (1.5, 1.8)
    log(3, loss=1.2)
    callback.on_save(args, state, control)
    assert stored(job_id) == [1, 2, 2, 3]  # a checkpoint's steps are stored with it
    log(4, loss=1.0)
    callback.on_train_end(args, state, control)
    assert stored(job_id) == [1, 2, 2, 3, 4] and get_job(job_id).final_loss == 1.0

    monkeypatch.setattr(metrics, "METRIC_WRITE_SECONDS", 0.0)
    log(5, loss=0.9)  # the interval has passed: written at once
    assert stored(job_id)[-1] == 5
