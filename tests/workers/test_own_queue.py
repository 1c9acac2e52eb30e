"""A training worker consumes a queue of its own (placement sends each job to the worker it fits), and still
registers as a training worker; an analysis worker keeps its shared queue."""

from types import SimpleNamespace

import pytest
from celery import Celery
from kombu import Queue

from backend.queue import ANALYSIS_QUEUE, QUEUE, worker_queue
from workers import main, registry


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


def test_a_failed_write_of_a_freed_worker_is_mended_by_the_next_beat(monkeypatch: pytest.MonkeyPatch) -> None:
    """A database blip as the worker frees up must not leave its row "busy" for good (placement would send it
    nothing more): every beat writes the current job again, and runs the placement the freed worker owes."""
    writes: list[dict[str, object]] = []
    placements: list[int] = []
    blips = [False, True]  # the second write (the worker freeing up) fails

    def touch(**values: object) -> None:
        if blips.pop(0) if blips else False:
            raise ConnectionError("database unreachable")
        writes.append(values)

    monkeypatch.setattr(registry, "touch", touch)
    monkeypatch.setattr(registry, "place", lambda: placements.append(1))
    monkeypatch.setattr(registry._State, "queue", QUEUE)
    monkeypatch.setattr(registry._State, "current", None)
    monkeypatch.setattr(registry._State, "owes_placement", False)
    registry.set_current_job(7)
    registry.set_current_job(None)  # the write fails: logged, not raised
    assert writes == [{"current_job_id": 7}] and placements == []
    registry._report()  # the next beat
    assert writes[-1] == {"current_job_id": None} and placements == [1]
    registry._report()
    assert placements == [1]  # placed once
