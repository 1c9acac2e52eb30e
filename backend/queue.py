"""Celery configuration and task names. The web app sends tasks by name; it never imports worker code."""

from celery import Celery

from backend.config import get_settings

RUN_JOB = "studio.run_job"
ANALYZE_DATASET = "studio.analyze_dataset"
# De-quantize an uploaded GGUF or download a Hub model (runs on the analysis queue: minutes, not hours).
IMPORT_MODEL = "studio.import_model"
GENERATE = "studio.generate"
# Package a job's weights (final or a checkpoint) as a zip: adapter, merged into the base, or full model.
EXPORT_WEIGHTS = "studio.export_weights"
QUEUE = "studio"
# Short tasks (token statistics, dry-run renders, hygiene) get their own queue and worker process, so they
# never wait behind an hours-long training job.
ANALYSIS_QUEUE = "studio.analysis"
# Training jobs go to one worker's own queue, chosen by placement (backend/work/placement.py); a training worker
# started with `-Q studio` consumes `studio.worker.<its node name>` instead (workers/main.py).
WORKER_QUEUE_PREFIX = "studio.worker."


def worker_queue(name: str) -> str:
    """The queue only training worker `name` (its Celery node name) consumes."""
    return WORKER_QUEUE_PREFIX + name


def make_celery() -> Celery:
    settings = get_settings()
    app = Celery("studio", broker=settings.broker_url)
    app.conf.update(
        task_default_queue=QUEUE,
        # A job is acknowledged only when it ends, so a crashed worker's job is redelivered; the database
        # claim (not the broker) decides whether a delivery runs.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_concurrency=1,
        task_ignore_result=True,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        broker_transport_options=_transport_options(settings.broker_url),
    )
    return app


def _transport_options(broker_url: str) -> dict[str, object]:
    if broker_url.startswith("sqla+"):
        # kombu hands these to create_engine: wait out SQLite write locks instead of failing.
        return {"connect_args": {"timeout": 30}}
    # Jobs train for hours; Redis redelivers only after a long silence (the DB claim makes a rerun a no-op).
    # A Redis that accepts connections but never answers must fail a send in seconds, not hang the API or the sweep.
    return {"visibility_timeout": 12 * 3600, "socket_timeout": 5, "socket_connect_timeout": 5}


_app: Celery | None = None


def celery_app() -> Celery:
    global _app
    if _app is None:
        _app = make_celery()
    return _app
