"""This worker in the `workers` table: what it trains on, that it is alive, and which job it runs.

The API reads the table to refuse what no live worker can run (qlora without a CUDA worker with
bitsandbytes) and to list the workers. The Celery pool child, the process that runs the tasks and owns the
device, registers itself, refreshes `last_seen_at` from a daemon thread every `heartbeat_seconds`, sets
`current_job_id` while a job runs, and deletes its row when it exits. A worker killed outright leaves its
row behind; the API tells it apart by its old `last_seen_at`. Each write publishes `worker_key`, which wakes
the live Workers page.
"""

import importlib.util
import logging
import os
import platform
import shutil
import threading
from typing import Any

import torch
from sqlalchemy import delete, update

from backend.config import get_settings
from backend.db import Worker, session_scope
from backend.events import publish_worker
from backend.job.lifecycle import db_now
from backend.queue import QUEUE
from backend.work.kinds import JOB
from backend.work.reaper import recover_orphans
from backend.work.send import place
from workers import observability, shutdown
from workers.flops import device_peak
from workers.ranks import data_parallel_processes
from workers.training import device_description, use_bf16

log = logging.getLogger(__name__)


class _State:
    name: str | None = None
    queue = ""
    stop = threading.Event()
    thread: threading.Thread | None = None
    # The job this process runs (None: idle), written again by every beat: one failed write (a database blip)
    # must not leave the row saying "busy" for good, which placement would believe and send nothing here.
    current: int | None = None
    # Freed, but the placement that hands this worker its next job has not run yet (it failed, or was skipped).
    owes_placement = False


def registered_name() -> str | None:
    """The name this process registered under (the Celery node name), if it did."""
    return _State.name


def worker_name() -> str:
    """Who holds the leases this process takes: its Celery node name (unique per worker), or host:pid."""
    return _State.name or get_settings().worker_name or f"{platform.node()}:{os.getpid()}"


def ram_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def disk_free_bytes() -> int | None:
    """Free bytes on the data folder's disk (None when it cannot be read): checkpoints and artifacts land there,
    so an operator sees a machine running short (placement does not judge it: no job estimates its disk yet)."""
    try:
        return shutil.disk_usage(get_settings().data_dir).free
    except OSError:
        return None


def compute_capability() -> str | None:
    """The first GPU's CUDA compute capability, e.g. "8.0" (bf16 and fast kernels start at 8.0), None without."""
    if not torch.cuda.is_available():
        return None
    major, minor = torch.cuda.get_device_capability(0)
    return f"{major}.{minor}"


def describe(queue: str = "") -> dict[str, Any]:
    """The columns that say what this machine can train with: device, precision, memory, libraries, and for a
    training worker (one consuming `queue` studio) the peak matmul throughput its jobs' MFU is measured against."""
    cuda = torch.cuda.is_available()
    gpus = [torch.cuda.get_device_properties(i) for i in range(torch.cuda.device_count())] if cuda else []
    try:
        processes: int | str = data_parallel_processes()
    except ValueError as exc:  # a misconfigured count fails each job with this message; show it here too
        processes = str(exc)
    details = {
        "gpu_count": len(gpus),
        "gpus": [{"name": g.name, "memory_bytes": g.total_memory} for g in gpus],
        "cpu_count": os.cpu_count(),
        "ram_bytes": ram_bytes(),
        "torch": torch.__version__,
        "cuda_version": torch.version.cuda,
        "bitsandbytes": importlib.util.find_spec("bitsandbytes") is not None,
        "data_parallel_processes": processes,
        "python": platform.python_version(),
        "pid": os.getpid(),
    }
    if training(queue):
        # Measured here, in the pool child that trains, with its threads and device (a second or two, in the
        # registry's thread); an analysis worker trains nothing and keeps its cores for its own work.
        details["peak_matmul"] = device_peak().details()
    return {
        "device": device_description(),
        "cuda": cuda,
        "bf16": use_bf16(),
        # What a model must fit in: the first GPU's memory, or RAM on a CPU worker.
        "device_memory_bytes": gpus[0].total_memory if gpus else ram_bytes(),
        "disk_free_bytes": disk_free_bytes(),
        "compute_capability": compute_capability(),
        "details": details,
    }


def register(name: str, queue: str) -> None:
    """Insert or refresh this worker's row, with a fresh description and no job."""
    with session_scope() as s:
        now = db_now(s)
        s.merge(
            Worker(
                name=name,
                hostname=platform.node(),
                queue=queue,
                current_job_id=None,
                started_at=now,
                last_seen_at=now,
                **describe(queue),
            )
        )
    publish_worker(name)
    if training(queue):
        place()  # jobs that waited for a worker like this one start now, not at the next sweep


def training(queue: str) -> bool:
    """Whether a worker consuming `queue` (comma-separated) trains: jobs are placed on it."""
    return QUEUE in queue.split(",")


def touch(**values: Any) -> None:
    """Refresh `last_seen_at` (and set `values`); re-register if the row went missing."""
    name = _State.name
    if name is None:
        return  # not a Celery worker (a test calling the task directly): nothing to report
    with session_scope() as s:
        res = s.execute(
            update(Worker)
            .where(Worker.name == name)
            .values(last_seen_at=db_now(s), disk_free_bytes=disk_free_bytes(), **values)
            .execution_options(synchronize_session=False)
        )
        found = res.rowcount == 1  # type: ignore[attr-defined]
    if not found:
        register(name, _State.queue)
        if values:
            touch(**values)
        return
    publish_worker(name)


def set_current_job(job_id: int | None) -> None:
    """Say which job this worker runs now (None: idle). Never fails the job: the registry is informative, and
    the next beat writes it again."""
    _State.current = job_id
    _State.owes_placement = job_id is None and training(_State.queue)
    try:
        _report()
    except Exception as exc:
        log.warning("could not record job %s in the worker registry (the next beat will): %s", job_id, exc)


def _report() -> None:
    """Write this worker's current job, then, once it is free, place the waiting jobs (the one with the highest
    priority that fits a free worker goes now). A worker that is stopping takes no new job."""
    touch(current_job_id=_State.current)
    if _State.current is None and training(_State.queue) and _State.name is not None:
        recover_orphans(JOB, _State.name)
    if _State.owes_placement and _State.current is None and not shutdown.requested():
        place()
        _State.owes_placement = False


def _beat() -> None:
    name = _State.name
    assert name is not None
    try:
        register(name, _State.queue)
    except Exception as exc:  # the database may be starting too; the next beat registers
        log.warning("worker registration failed (retrying): %s", exc)
    while not _State.stop.wait(get_settings().heartbeat_seconds):
        try:
            _report()
            observability.HEARTBEATS.inc()
        except Exception as exc:  # a missed beat is retried; liveness allows a lease's worth of them
            log.warning("worker registry beat failed: %s", exc)


def start(name: str, queue: str) -> None:
    """Register this process and keep its row fresh from a daemon thread (registration runs there too: a
    pool child must answer Celery within seconds of starting, and describing a GPU can take longer)."""
    _State.name, _State.queue = name, queue
    _State.stop.clear()
    _State.thread = threading.Thread(target=_beat, name="worker-registry", daemon=True)
    _State.thread.start()


def remove(name: str) -> None:
    """Delete the row of worker `name` (a clean exit)."""
    with session_scope() as s:
        s.execute(delete(Worker).where(Worker.name == name))
    publish_worker(name)


def stop() -> None:
    """Stop beating and delete this process's row."""
    name = _State.name
    if name is None:
        return
    _State.stop.set()
    if _State.thread is not None:
        _State.thread.join(timeout=10)
    _State.name = None
    try:
        remove(name)
    except Exception as exc:
        log.warning("could not remove worker %s from the registry: %s", name, exc)
