"""Celery entry point: `celery -A workers.main worker --pool=prefork --concurrency=1 -Q studio`."""

from celery.signals import worker_process_init

from backend.db.base import reset_engine
from backend.queue import celery_app

app = celery_app()

# Importing the modules registers their tasks on `app` (the same instance: celery_app() is a singleton).
import workers.analysis.tasks  # noqa: E402
import workers.tasks  # noqa: E402, F401


@worker_process_init.connect
def _fresh_engine(**_: object) -> None:
    """A forked pool child must not share the parent's database sockets."""
    reset_engine()
