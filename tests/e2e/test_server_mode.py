"""Server-mode guarantees: one Redis subscription per API process, and the database (not the broker) owns jobs."""

import signal
import threading
import time
from pathlib import Path

import pytest
import redis

from backend.events import channel
from tests.e2e.sse import read_events
from tests.e2e.test_loop import pretrain, upload
from tests.support import StudioProcess

pytestmark = pytest.mark.server


@pytest.fixture(params=["postgres"])
def backend_env(request: pytest.FixtureRequest, tmp_path: Path, server_services: dict[str, str]) -> dict[str, str]:
    from tests.conftest import _empty_postgres

    _empty_postgres(server_services["STUDIO_DATABASE_URL"])
    redis.Redis.from_url(server_services["STUDIO_BROKER_URL"]).flushdb()
    return {"STUDIO_DATA_DIR": str(tmp_path / "data"), **server_services}


def _long_job(studio: StudioProcess) -> dict:
    client = studio.client()
    return pretrain(client, upload(client, "tiny.txt")["id"], max_steps=100_000)


def test_many_sse_clients_share_one_redis_subscription(studio: StudioProcess) -> None:
    job = _long_job(studio)
    r = redis.Redis.from_url(studio.env["STUDIO_REDIS_URL"])
    counts: list[int] = []

    def watch() -> None:
        client = studio.client()
        n = 0
        for ev in read_events(client, f"/api/jobs/{job['id']}/stream"):
            n += ev.event == "metric"
            if n >= 20:
                break
        counts.append(n)

    threads = [threading.Thread(target=watch) for _ in range(8)]
    for t in threads:
        t.start()
    time.sleep(2)
    (_, subscribers), *_ = r.pubsub_numsub(channel(studio.env["STUDIO_REDIS_URL"]))
    for t in threads:
        t.join(timeout=120)
    assert counts == [20] * 8
    assert subscribers == 1  # one per API process, fanned out to 8 clients
    studio.client().post(f"/api/jobs/{job['id']}/cancel")
    studio.wait_job(studio.client(), job["id"], ("cancelled",), timeout=60)


def test_hard_killed_worker_job_is_failed_and_a_new_worker_serves(studio: StudioProcess) -> None:
    client = studio.client()
    job = _long_job(studio)
    for ev in read_events(client, f"/api/jobs/{job['id']}/stream"):
        if ev.event == "job" and ev.data["current_step"] > 0:
            break
    studio.stop("worker", signal.SIGKILL)  # no chance to ack, report or clean up
    job = studio.wait_job(client, job["id"], ("failed",), timeout=60)
    assert "worker lost" in job["error"]

    studio.start_worker("worker2")  # restart what the test stopped
    res = pretrain(client, job["dataset_id"], max_steps=3)
    assert studio.wait_job(client, res["id"], ("succeeded", "failed"), timeout=120)["status"] == "succeeded"
    # The killed job stays failed even though Redis may redeliver its message to the new worker.
    assert client.get(f"/api/jobs/{job['id']}").json()["status"] == "failed"
