"""A training worker consumes a queue of its own (placement sends each job to the worker it fits), and still
registers as a training worker; an analysis worker keeps its shared queue."""

from types import SimpleNamespace

import pytest
from celery import Celery
from kombu import Queue

from backend.queue import ANALYSIS_QUEUE, QUEUE, worker_queue
from workers import main


def app() -> Celery:
    celery = Celery("own-queue-test", broker="memory://")
    celery.conf.task_default_queue = QUEUE
    return celery


def consuming(queue: str, node: str) -> dict[str, Queue]:
    """What a worker started with `-Q queue` as node `node` consumes once set up."""
    worker = app()
    worker.amqp.queues.select([queue])
    main._own_queue(sender=node, instance=SimpleNamespace(app=worker))
    return dict(worker.amqp.queues.consume_from or {})


def test_a_training_worker_consumes_its_own_queue_instead_of_the_shared_one() -> None:
    own = worker_queue("worker-1@gpu-box")
    assert own == "studio.worker.worker-1@gpu-box"
    consumed = consuming(QUEUE, "worker-1@gpu-box")
    assert list(consumed) == [own]
    # Bound as the API's send_task(queue=own) routes a message: to an exchange of the queue's name.
    sent_to = app().amqp.queues[own]
    assert (consumed[own].exchange.name, consumed[own].routing_key) == (sent_to.exchange.name, sent_to.routing_key)
    assert list(consuming(ANALYSIS_QUEUE, "analysis-1@box")) == [ANALYSIS_QUEUE]


def test_its_own_queue_is_recorded_as_the_training_role(monkeypatch: pytest.MonkeyPatch) -> None:
    queues = SimpleNamespace(consume_from={worker_queue("w@h"): None})
    monkeypatch.setattr(main, "app", SimpleNamespace(amqp=SimpleNamespace(queues=queues), conf=main.app.conf))
    assert main._queues() == QUEUE
