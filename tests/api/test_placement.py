"""Placement by capability: a job goes to the queue of a free live training worker it fits (the estimate's memory
against the worker's, qlora's CUDA and bitsandbytes), highest priority first; a job that fits none, or whose owner
runs the most jobs allowed, stays queued saying why, and is placed once a worker can take it."""

import io
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from backend.config import get_settings
from backend.db import Job, JobEvent, User, Worker, session_scope, utcnow
from backend.queue import QUEUE, RUN_JOB, worker_queue
from backend.work import placement, send
from backend.work.reaper import sweep

GIB = 1024**3


class Broker:
    """A stand-in for the broker: records every task sent, with its queue."""

    def __init__(self) -> None:
        self.sent: list[tuple[int, str]] = []

    def send_task(self, name: str, args: list[int], queue: str) -> None:
        if name == RUN_JOB:
            self.sent.append((args[0], queue))

    def take(self) -> list[tuple[int, str]]:
        sent, self.sent = self.sent, []
        return sent


@pytest.fixture
def broker(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> Broker:
    fake = Broker()
    monkeypatch.setattr(send, "celery_app", lambda: fake)
    return fake


@pytest.fixture
def text_dataset(client: TestClient) -> int:
    res = client.post("/api/datasets", files={"file": ("t.txt", io.BytesIO(b"some text to train on\n" * 20))})
    return int(res.json()["id"])


def add_worker(
    name: str, *, memory: int, cuda: bool = False, job_id: int | None = None, bitsandbytes: bool = False
) -> None:
    """A live training worker row, as `studio worker` registers one (memory: its device's, or RAM)."""
    with session_scope() as s:
        now = utcnow()
        s.merge(
            Worker(
                name=name, queue=QUEUE, device=f"cuda:0 {name}" if cuda else "cpu", cuda=cuda,
                device_memory_bytes=memory, details={"bitsandbytes": bitsandbytes}, current_job_id=job_id,
                started_at=now, last_seen_at=now,
            )
        )  # fmt: skip


def create(client: TestClient, dataset: int, **fields: Any) -> dict[str, Any]:
    hp = {"max_steps": 2, "validation_fraction": 0, **fields.pop("hyperparameters", {})}
    body = {"kind": "pretrain", "architecture": "tiny", "dataset_id": dataset, "hyperparameters": hp, **fields}
    res = client.post("/api/jobs", json=body)
    assert res.status_code == 201, res.text
    return dict(res.json())


def needs(job_id: int) -> dict[str, int]:
    with session_scope() as s:
        job = s.get(Job, job_id)
        assert job is not None
        return dict(job.needs)


def events(job_id: int) -> list[str]:
    with session_scope() as s:
        return [e.message for e in s.query(JobEvent).filter(JobEvent.job_id == job_id).order_by(JobEvent.id)]


def set_status(job_id: int, status: str) -> None:
    with session_scope() as s:
        s.execute(update(Job).where(Job.id == job_id).values(status=status, lease_worker=None))


@pytest.fixture
def limit(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("STUDIO_MAX_RUNNING_JOBS_PER_USER", "1")
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def test_jobs_go_to_a_worker_they_fit_and_wait_saying_why_when_none_does(
    client: TestClient, broker: Broker, text_dataset: int
) -> None:
    # With no worker live, nothing is sent, and the job says why.
    big = create(client, text_dataset, hyperparameters={"batch_size": 16, "max_length": 512})
    small = create(client, text_dataset, hyperparameters={"batch_size": 1, "max_length": 16})
    assert broker.take() == []
    assert big["status"] == "queued" and "no training worker is live" in big["waiting_reason"]
    need_big, need_small = needs(big["id"]), needs(small["id"])
    assert need_small["memory_cpu"] < need_big["memory_cpu"]

    # A CPU worker with room for the small job only: the big one keeps waiting, with the sizes in the reason.
    add_worker("cpu-small", memory=int((need_small["memory_cpu"] + need_big["memory_cpu"]) / 2 / 0.9))
    assert sweep().resent["job"] == [small["id"]]
    assert broker.take() == [(small["id"], worker_queue("cpu-small"))]
    waiting = client.get(f"/api/jobs/{big['id']}").json()
    assert waiting["status"] == "queued"
    assert waiting["waiting_reason"].startswith("no live training worker fits it: it needs about ")
    assert client.get(f"/api/jobs/{small['id']}").json()["waiting_reason"] is None
    assert sweep().resent["job"] == []  # the small one awaits its claim; the big one still fits nothing
    page = client.get(f"/jobs/{big['id']}")
    assert "no live training worker fits it" in page.text

    # A GPU worker big enough appears: the big job goes there, and only there.
    add_worker("gpu-big", memory=80 * GIB, cuda=True, bitsandbytes=True)
    assert sweep().resent["job"] == [big["id"]]
    assert broker.take() == [(big["id"], worker_queue("gpu-big"))]
    assert client.get(f"/api/jobs/{big['id']}").json()["waiting_reason"] is None


def test_a_big_job_goes_to_the_big_worker_and_a_small_one_to_the_free_one(
    client: TestClient, broker: Broker, text_dataset: int
) -> None:
    probe = create(client, text_dataset, hyperparameters={"batch_size": 16, "max_length": 512})
    need_big = needs(probe["id"])
    set_status(probe["id"], "cancelled")
    # The CPU worker cannot hold the big job; the GPU one can hold anything.
    add_worker("cpu", memory=int(need_big["memory_cpu"] / 2))
    add_worker("gpu", memory=80 * GIB, cuda=True)
    big = create(client, text_dataset, hyperparameters={"batch_size": 16, "max_length": 512})
    assert broker.take() == [(big["id"], worker_queue("gpu"))]
    small = create(client, text_dataset, hyperparameters={"batch_size": 1, "max_length": 16})
    # The GPU worker awaits the big job's claim: the small job goes to the free CPU worker.
    assert broker.take() == [(small["id"], worker_queue("cpu"))]

    # qlora needs CUDA and bitsandbytes: refused at creation while no live worker has both (see test_qlora);
    # a worker that lost them since is not sent it, and refuses it if a stale message reaches it.
    with session_scope() as s:
        job = s.get(Job, small["id"])
        assert job is not None
        job.method = "qlora"
        assert placement.refusal(s, small["id"], "cpu") == "qlora needs CUDA and bitsandbytes, cpu lacks them"
        placement.turn_away(s, small["id"], "cpu", "qlora needs CUDA and bitsandbytes, cpu lacks them")
    turned = client.get(f"/api/jobs/{small['id']}").json()
    assert turned["status"] == "queued" and turned["waiting_reason"].startswith("qlora needs CUDA")
    assert "not taken by cpu: qlora needs CUDA and bitsandbytes, cpu lacks them" in events(small["id"])


def test_priority_then_age_decides_which_waiting_job_a_freed_worker_takes(
    client: TestClient, broker: Broker, text_dataset: int
) -> None:
    add_worker("only", memory=64 * GIB, job_id=10_000)  # busy with someone's job
    refused = client.post(
        "/api/jobs", json={"kind": "pretrain", "architecture": "tiny", "dataset_id": text_dataset, "priority": 5}
    )
    assert refused.status_code == 422 and "only an administrator may raise" in refused.text, refused.text
    assert "priority" in refused.text
    with session_scope() as s:  # an operator may raise it
        s.execute(update(User).values(is_admin=True))
    low = create(client, text_dataset)
    high = create(client, text_dataset, priority=5)
    later = create(client, text_dataset, priority=5)
    assert broker.take() == []
    assert "every live training worker it fits is busy (1)" in high["waiting_reason"]
    assert (low["priority"], high["priority"]) == (0, 5)

    add_worker("only", memory=64 * GIB)  # free again: one job per free worker, the highest priority, oldest first
    assert sweep().resent["job"] == [high["id"]]
    assert broker.take() == [(high["id"], worker_queue("only"))]
    set_status(high["id"], "succeeded")
    assert sweep().resent["job"] == [later["id"]]
    set_status(later["id"], "succeeded")
    assert sweep().resent["job"] == [low["id"]]


def test_a_user_at_the_running_limit_waits_with_the_reason(
    client: TestClient, broker: Broker, text_dataset: int, limit: None
) -> None:
    from backend.job.lifecycle import claim_job

    add_worker("w1", memory=64 * GIB)
    add_worker("w2", memory=64 * GIB)
    first = create(client, text_dataset)
    assert broker.take() == [(first["id"], worker_queue("w1"))]
    assert claim_job(first["id"], "w1") is not None
    add_worker("w1", memory=64 * GIB, job_id=first["id"])

    second = create(client, text_dataset)
    assert broker.take() == []  # w2 is free, but the owner already runs the one job allowed
    assert second["waiting_reason"] == (
        "1 of its owner's jobs are running, the most STUDIO_MAX_RUNNING_JOBS_PER_USER=1 allows"
    )
    # A message sent before the limit was reached is refused by the claim, and the job stays queued.
    with session_scope() as s:
        assert placement.refusal(s, second["id"], "w2") == second["waiting_reason"]

    set_status(first["id"], "succeeded")
    with session_scope() as s:  # placement would also run when w1 reports itself free
        s.execute(update(Job).where(Job.id == second["id"]).values(sent_at=utcnow() - timedelta(hours=1)))
    assert sweep().resent["job"] == [second["id"]]
    assert broker.take() == [(second["id"], worker_queue("w2"))]


def test_a_worker_that_registers_reports_its_capabilities_and_takes_the_waiting_job(
    client: TestClient, broker: Broker, text_dataset: int
) -> None:
    from workers import registry

    job = create(client, text_dataset)
    assert "no training worker is live" in job["waiting_reason"]
    name = "placement-test@host"
    registry.register(name, QUEUE)  # what a training worker's pool child does when it starts
    try:
        assert broker.take() == [(job["id"], worker_queue(name))]
        (row,) = [w for w in client.get("/api/workers").json()["items"] if w["busy"] is False]
        assert row["disk_free_bytes"] > 0 and row["device_memory_bytes"] > 0
        assert (row["compute_capability"] is None) == (not row["cuda"])
        assert "bitsandbytes" in row["details"]
    finally:
        registry.remove(name)


def test_a_stale_delivery_on_a_worker_the_job_is_no_longer_placed_on_is_dropped(
    client: TestClient, broker: Broker, text_dataset: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    from backend.job.lifecycle import claim_job
    from backend.work.kinds import JOB
    from workers import claims, registry

    add_worker("w1", memory=64 * GIB)
    job = create(client, text_dataset)
    assert broker.take() == [(job["id"], worker_queue("w1"))]
    # w2 holds an older copy of the message (the job was placed on w2 once, then again on w1): claiming it would
    # let the job overtake what placement ranked before it, so w2 drops it and leaves the placement alone.
    monkeypatch.setattr(registry, "worker_name", lambda: "w2")
    assert claims.take(JOB, job["id"], claim_job) is None
    after = client.get(f"/api/jobs/{job['id']}").json()
    assert after["status"] == "queued" and after["waiting_reason"] is None
    with session_scope() as s:
        row = s.get(Job, job["id"])
        assert row is not None and row.placed_on == "w1" and row.sent_at is not None
    assert not [e for e in events(job["id"]) if "not taken" in e]
    assert broker.take() == []

    monkeypatch.setattr(registry, "worker_name", lambda: "w1")  # the worker it is placed on claims it
    won = claims.take(JOB, job["id"], claim_job)
    assert won is not None and won.worker == "w1"


def test_two_workers_claiming_one_owners_jobs_at_once_start_no_more_than_the_limit(
    client: TestClient, broker: Broker, text_dataset: int, limit: None
) -> None:
    import threading

    from backend.job.lifecycle import claim_job

    jobs = [create(client, text_dataset)["id"] for _ in range(4)]
    start = threading.Barrier(len(jobs))
    won: list[object] = []

    def claim(job_id: int) -> None:
        start.wait()
        won.append(claim_job(job_id, f"w{job_id}"))

    threads = [threading.Thread(target=claim, args=(job_id,)) for job_id in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(won) == len(jobs)
    assert sum(w is not None for w in won) == 1  # the owner's row lock lets the claims count one at a time
    with session_scope() as s:
        statuses = sorted(s.scalars(select(Job.status).where(Job.id.in_(jobs))))
    assert statuses == ["queued", "queued", "queued", "running"]


def test_an_idle_worker_recovers_at_once_the_job_its_previous_process_held(
    client: TestClient, broker: Broker, text_dataset: int
) -> None:
    from backend.job.lifecycle import claim_job
    from backend.work.kinds import JOB
    from backend.work.reaper import recover_orphans

    add_worker("same-name", memory=64 * GIB)
    job = create(client, text_dataset)
    assert broker.take() == [(job["id"], worker_queue("same-name"))]
    assert claim_job(job["id"], "same-name") is not None
    assert recover_orphans(JOB, "same-name") == []  # it still beats: a live process holds it
    quiet = 3 * get_settings().heartbeat_seconds
    with session_scope() as s:  # silent for longer than a few beats, well within the lease
        s.execute(update(Job).where(Job.id == job["id"]).values(heartbeat_at=utcnow() - timedelta(seconds=quiet + 5)))
    assert quiet + 5 < get_settings().lease_seconds
    assert recover_orphans(JOB, "other-name") == []  # not another worker's to recover
    assert recover_orphans(JOB, "same-name") == [job["id"]]
    assert client.get(f"/api/jobs/{job['id']}").json()["status"] == "queued"
    assert broker.take() == [(job["id"], worker_queue("same-name"))]  # placed again, on the worker now free


def test_a_disabled_owners_queued_jobs_wait_until_the_account_is_enabled(
    client: TestClient, broker: Broker, text_dataset: int
) -> None:
    add_worker("only", memory=64 * GIB, job_id=10_000)  # busy: the job waits
    job = create(client, text_dataset)
    with session_scope() as s:  # what `studio users disable` does to the row
        s.execute(update(User).values(disabled_at=utcnow()))
    add_worker("only", memory=64 * GIB)  # free now, but the job's owner is disabled
    assert sweep().resent["job"] == []
    assert broker.take() == []
    with session_scope() as s:
        row = s.get(Job, job["id"])
        assert row is not None and row.status == "queued" and row.waiting_reason == placement.DISABLED
        assert placement.refusal(s, job["id"], "only") == placement.DISABLED  # a message sent earlier is refused
        s.execute(update(User).values(disabled_at=None))
    assert sweep().resent["job"] == [job["id"]]
    assert broker.take() == [(job["id"], worker_queue("only"))]
