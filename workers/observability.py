"""A worker's own Prometheus metrics, served by its Celery pool child on `STUDIO_WORKER_METRICS_PORT` (0: none).

The pool child is the process that runs the tasks and beats the registry's heart, so it counts them and serves them:
jobs run (by outcome), training failures (by kind), heartbeats, and every task's run time. Steps and tokens/s of the
job it trains are read from the database at scrape time: a data-parallel run's steps happen in torchrun's processes,
whose only common record with this one is the job's row and its points.
"""

import logging
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from prometheus_client import REGISTRY, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from backend.db import Job, session_scope
from backend.observability.metrics import SHORT_BUCKETS, latest_tokens_per_second

log = logging.getLogger(__name__)

JOBS = Counter("studio_worker_jobs", "Training jobs this worker ran, by how the run ended.", ["outcome"])
FAILURES = Counter(
    "studio_worker_failures",
    "Training jobs that failed on this worker, by kind: diverged, preflight, or the error's type.",
    ["kind"],
)
HEARTBEATS = Counter("studio_worker_heartbeats", "Times this worker refreshed its row in the workers table.")
TASK_SECONDS = Histogram(
    "studio_worker_task_seconds",
    "Run time of each task this worker ran (training, export, analysis, import, generation), by task name.",
    ["task"],
    buckets=(*SHORT_BUCKETS, 7200.0, 28800.0, 86400.0),
)


class TrainingCollector(Collector):
    """The job this process trains now, read at scrape time: its step and tokens/s, and the steps trained here."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.job_id: int | None = None
        self.done_steps = 0  # steps of the runs this process has finished

    def collect(self) -> Iterable[Metric]:
        with self.lock:  # a run that ends meanwhile moves its steps to done_steps: never counted twice or dropped
            job_id, done = self.job_id, self.done_steps
            try:
                step, trained, rate = live_steps(job_id)
            except Exception as exc:
                # Left out rather than reported low (a counter that fell would read as a restart); the counters
                # kept in this process still answer.
                log.warning("worker metrics: the database could not be read: %s", exc)
                return
        yield CounterMetricFamily("studio_worker_steps", "Optimizer steps this worker trained.", value=done + trained)
        current = GaugeMetricFamily("studio_worker_job_step", "Step of the job this worker trains.", labels=["job_id"])
        if job_id is not None:
            current.add_metric([str(job_id)], step)
        yield current
        yield GaugeMetricFamily(
            "studio_worker_tokens_per_second", "Latest throughput of the job this worker trains (0 idle).", rate or 0.0
        )


def live_steps(job_id: int | None) -> tuple[int, int, float | None]:
    """(current step, steps this attempt trained, latest tokens/s) of `job_id`."""
    if job_id is None:
        return 0, 0, None
    with session_scope() as s:
        job = s.get(Job, job_id)
        if job is None:
            return 0, 0, None
        return job.current_step, max(0, job.current_step - job.start_step), latest_tokens_per_second(s, job_id)


COLLECTOR = TrainingCollector()


class _State:
    registered = False
    started: dict[str, float] = {}  # Celery task id -> when it started


def serve(port: int, host: str = "127.0.0.1") -> bool:
    """Serve this process's metrics on `host`:`port` (no token guards them: a private address only); False when
    the port is taken: a worker without metrics still trains."""
    if not _State.registered:
        REGISTRY.register(COLLECTOR)
        _State.registered = True
    try:
        start_http_server(port, addr=host)
    except OSError as exc:
        log.warning("worker metrics: cannot listen on %s:%s (%s); serving none", host, port, exc)
        return False
    log.info("worker metrics on %s:%s", host, port)
    return True


@contextmanager
def training(job_id: int) -> Iterator[None]:
    """While this process trains `job_id`: its step and tokens/s are scraped live, and its steps are added to the
    worker's total when the run ends."""
    with COLLECTOR.lock:
        COLLECTOR.job_id = job_id
    try:
        yield
    finally:
        with COLLECTOR.lock:
            try:
                COLLECTOR.done_steps += live_steps(job_id)[1]
            except Exception as exc:  # metrics must never fail a job's end
                log.warning("worker metrics: steps of job %s not counted: %s", job_id, exc)
            COLLECTOR.job_id = None


def job_ended(outcome: str) -> None:
    """Count a training task's end by its outcome (succeeded, failed, paused, requeued, lost, skipped, ...)."""
    JOBS.labels(outcome=outcome).inc()


def task_started(task_id: str) -> None:
    _State.started[task_id] = time.monotonic()


def task_finished(task_id: str, task_name: str) -> None:
    started = _State.started.pop(task_id, None)
    if started is not None:
        TASK_SECONDS.labels(task=task_name).observe(time.monotonic() - started)
