from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class WorkerRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    name: str = Field(description="The Celery node name, e.g. worker-1234@gpu-box.")
    hostname: str | None = Field(description="The machine's name; null for non-admins.")
    queue: str = Field(description='"studio" (training) or "studio.analysis" (dataset analysis, model imports).')
    device: str = Field(description='e.g. "cuda:0 NVIDIA H100 80GB HBM3", or "cpu".')
    cuda: bool
    bf16: bool
    device_memory_bytes: int = Field(description="The first GPU's memory, or RAM on a CPU worker.")
    details: dict[str, Any] = Field(
        description="gpu_count, gpus, cpu_count, ram_bytes, torch, cuda_version, bitsandbytes, "
        "data_parallel_processes, and on a training worker peak_matmul (flops_per_second, dtype fp32 or bf16, "
        "device, threads, size: the fastest square matmul it measured at start, the denominator of its jobs' "
        "mfu); admins also see pid and python"
    )
    disk_free_bytes: int | None = Field(None, description="Free bytes on its data folder's disk, at its last beat.")
    compute_capability: str | None = Field(None, description='The first GPU\'s CUDA compute capability ("8.0").')
    current_job_id: int | None = Field(description="The job it runs; null for another user's job (except to admins).")
    busy: bool = Field(False, description="Running a job, whoever's it is.")
    started_at: datetime
    last_seen_at: datetime
    live: bool = Field(
        False, description="Seen within the last lease_seconds (a worker refreshes its row every heartbeat)."
    )


class WorkerList(BaseModel):
    items: list[WorkerRead]


class WorkersLive(WorkerList):
    """What the live Workers page shows: the workers, the jobs waiting, and the server's clock."""

    queued: int = Field(description="Jobs waiting in the queue for a training worker.")
    now: datetime = Field(description="The database's clock when this was read: last_seen_at is on it too.")
