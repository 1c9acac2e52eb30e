"""Celery entry point: `celery -A workers.main worker --pool=prefork --concurrency=1 -Q studio`."""

import logging
from typing import Any

from celery.signals import (
    celeryd_after_setup,
    setup_logging,
    task_postrun,
    task_prerun,
    worker_process_init,
    worker_process_shutdown,
    worker_ready,
    worker_shutdown,
    worker_shutting_down,
)

from backend.config import get_settings
from backend.db.base import reset_engine
from backend.observability import logs
from backend.queue import QUEUE, WORKER_QUEUE_PREFIX, celery_app, worker_queue
from workers import observability, registry, shutdown

log = logging.getLogger(__name__)
app = celery_app()

# Importing the modules registers their tasks on `app` (the same instance: celery_app() is a singleton).
import workers.analysis.tasks  # noqa: E402
import workers.export  # noqa: E402
import workers.generate  # noqa: E402
import workers.model_import  # noqa: E402
import workers.tasks  # noqa: E402, F401


def _queues() -> str:
    """The queues this worker was started on (-Q), e.g. "studio" for training, "studio.analysis" for analysis:
    its own queue (`studio.worker.<name>`) is recorded as "studio", the role the API lists workers by."""
    names = app.amqp.queues.consume_from or ()
    roles = {QUEUE if name.startswith(WORKER_QUEUE_PREFIX) else name for name in names}
    return ",".join(sorted(roles)) or str(app.conf.task_default_queue)


@celeryd_after_setup.connect
def _own_queue(sender: str, instance: Any, **_: object) -> None:
    """A training worker (-Q studio) consumes a queue of its own instead of the shared one: the API places each
    job on a worker it fits (backend/work/placement.py) and sends it there. Nothing is lost by not consuming
    "studio": the database, not the broker, says which jobs wait, and placement sends them again."""
    queues = instance.app.amqp.queues
    if QUEUE in (queues.consume_from or ()):
        # Looked up by name first, so it is declared as the API's send_task declares it (an exchange of its own
        # name): a plain select_add(name) would bind it to the default exchange, where no message arrives.
        queues.select_add(queues[worker_queue(sender)])
        queues.deselect(QUEUE)


@worker_process_init.connect
def _fresh_engine(sender: str | None = None, **_: object) -> None:
    """A forked pool child must not share the parent's database sockets; then it joins the worker registry
    under the Celery node name (`sender`), as the process that runs the tasks and owns the device."""
    reset_engine()
    registry.start(name=str(sender), queue=_queues())
    port = get_settings().worker_metrics_port
    if port:
        observability.serve(port, get_settings().worker_metrics_host)


def _json_logging(loglevel: int | None = None, **_: object) -> None:
    """Celery leaves its own logging set-up alone when this answers: the root logger writes JSON lines, with the
    running job's id (its loggers propagate there)."""
    logs.configure(loglevel or logging.INFO)


if get_settings().log_format == "json":  # else Celery's own human lines, as always
    setup_logging.connect(_json_logging)


@task_prerun.connect
def _task_started(task_id: str = "", **_: object) -> None:
    observability.task_started(task_id)


@task_postrun.connect
def _task_finished(task_id: str = "", task: Any = None, **_: object) -> None:
    observability.task_finished(task_id, str(getattr(task, "name", "unknown")))


@task_prerun.connect
def _graceful_shutdown(**_: object) -> None:
    shutdown.install_in_child()


@worker_ready.connect
def _remember_pool(sender: Any = None, **_: object) -> None:
    shutdown.remember_pool(sender)


@worker_shutting_down.connect
def _shut_children_down(**_: object) -> None:
    """A warm shutdown of the main process would wait for the running task (hours of training): pass the signal
    on, so the children checkpoint, give their work back and exit within the grace."""
    shutdown.forward_to_children()


@worker_process_shutdown.connect
def _leave_registry(**_: object) -> None:
    registry.stop()


@worker_shutdown.connect
def _clear_registry(sender: Any = None, **_: object) -> None:
    """In the main process, last: a pool child killed outright (out of memory) left its row behind."""
    try:
        registry.remove(str(sender.hostname))
    except Exception as exc:  # shutting down regardless; a stale row only reads as not live
        log.warning("could not clear the worker registry: %s", exc)
