from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from backend.db.base import Base, UTCDateTime, utcnow
from backend.db.lease import Leased

ACTIVE_STATUSES = ("queued", "running")
FINAL_STATUSES = ("succeeded", "failed", "cancelled")


class Job(Leased, Base):
    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(primary_key=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(16))  # "pretrain" | "finetune"
    status: Mapped[str] = mapped_column(String(16), default="queued", index=True)
    method: Mapped[str | None] = mapped_column(String(16))  # a name in backend.method.registry.METHODS
    objective: Mapped[str] = mapped_column(String(16))  # a name in backend.method.registry.OBJECTIVES
    architecture: Mapped[str | None] = mapped_column(String(32))
    # Pretrain: reuse this model's tokenizer instead of training one on the corpus.
    tokenizer_model_id: Mapped[int | None] = mapped_column(ForeignKey("models.id", ondelete="RESTRICT"))
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id", ondelete="RESTRICT"), index=True)
    base_model_id: Mapped[int | None] = mapped_column(ForeignKey("models.id", ondelete="RESTRICT"))
    # A separate validation file instead of a held-out fraction of the training data.
    validation_dataset_id: Mapped[int | None] = mapped_column(ForeignKey("datasets.id", ondelete="RESTRICT"))
    hyperparameters: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # The method's and the objective's own settings (backend/method/settings.py), defaults filled in.
    method_config: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict, server_default="{}")
    objective_config: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict, server_default="{}")
    # What actually ran: resolved defaults, dataset sha256, library versions; written by the worker.
    resolved_config: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # The worker that last ran it (kept after the end, for the page); the lease itself is in Leased's columns.
    worker: Mapped[str | None] = mapped_column(String(200))
    cancel_requested: Mapped[bool] = mapped_column(default=False)
    # Pause is a cancel that keeps a checkpoint to resume from; resume re-queues the job from it.
    pause_requested: Mapped[bool] = mapped_column(default=False)
    resume_checkpoint: Mapped[str | None] = mapped_column(String(1024))
    # Prompts generated at every eval so the user sees answers change over the run.
    watch_prompts: Mapped[list[str]] = mapped_column(JSON, default=list)
    cloned_from_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))
    current_step: Mapped[int] = mapped_column(default=0)
    # The step this attempt started from (a resumed run continues past 0): the ETA measures speed from here.
    start_step: Mapped[int] = mapped_column(default=0, server_default="0")
    total_steps: Mapped[int | None]
    device: Mapped[str | None] = mapped_column(String(200))
    error: Mapped[str | None] = mapped_column(Text)
    final_loss: Mapped[float | None]
    final_eval_loss: Mapped[float | None]
    # Placement (backend/work/placement.py): higher first among queued jobs; what the job needs of a worker
    # (memory on CUDA and on CPU, from the estimate it was admitted on); why it still waits, while it does.
    priority: Mapped[int] = mapped_column(default=0, server_default="0")
    needs: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict, server_default="{}")
    waiting_reason: Mapped[str | None] = mapped_column(Text)
    # The worker it was last sent to: while that message waits to be claimed, the worker counts as taken.
    placed_on: Mapped[str | None] = mapped_column(String(200))
    # What a client of the OpenAI-compatible API (/v1) gave that the studio does not otherwise keep: the model
    # name it asked for, the suffix and the metadata it reads back (backend/openai_compat/). Empty for other jobs.
    api_options: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict, server_default="{}")


class JobSample(Base):
    """A watch prompt's answer at one evaluation step."""

    __tablename__ = "job_samples"

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    step: Mapped[int]
    prompt: Mapped[str] = mapped_column(Text)
    output: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class JobEvent(Base):
    """A line of the job's log a person reads: status changes, warnings, errors."""

    __tablename__ = "job_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    level: Mapped[str] = mapped_column(String(16), default="info")
    message: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class JobMetric(Base):
    """One logged training point (the Trainer's log dict) at a step. The database is the source of truth."""

    __tablename__ = "job_metrics"

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    step: Mapped[int]
    values: Mapped[dict[str, float]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    # A step range of one job (a rollup bucket rebuilt, a step span measured) without reading the job's other rows.
    __table_args__ = (Index("ix_job_metrics_job_id_step", "job_id", "step"),)


class JobMetricRollup(Base):
    """One series (a key of the points' values) of one job over one bucket of steps: how many points, and the
    first, lowest, highest and last of them (value, point id, step, time), so a chart of a million points reads
    a thousand buckets instead (backend/db/metric_rollup.py keeps them as points are written)."""

    __tablename__ = "job_metric_rollups"

    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    level: Mapped[int] = mapped_column(primary_key=True)  # buckets of 4**level steps
    bucket: Mapped[int] = mapped_column(primary_key=True)  # step // 4**level
    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    count: Mapped[int]
    # Times as UTC epoch seconds: a read turns thousands of them into datetimes, cheaper from a float.
    first_value: Mapped[float]
    first_id: Mapped[int]
    first_step: Mapped[int]
    first_at: Mapped[float]
    min_value: Mapped[float]
    min_id: Mapped[int]
    min_step: Mapped[int]
    min_at: Mapped[float]
    max_value: Mapped[float]
    max_id: Mapped[int]
    max_step: Mapped[int]
    max_at: Mapped[float]
    last_value: Mapped[float]
    last_id: Mapped[int]
    last_step: Mapped[int]
    last_at: Mapped[float]


class Artifact(Base):
    __tablename__ = "artifacts"

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    path: Mapped[str] = mapped_column(String(1024))
    size_bytes: Mapped[int]
    sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
