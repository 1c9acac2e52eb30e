"""Server-mode guarantees: one Redis subscription per API process, and the database (not the broker) owns jobs."""

import threading
import time

import pytest
import redis

from backend.events import channel
from tests.e2e.sse import read_events
from tests.e2e.test_loop import pretrain, upload
from tests.support import StudioProcess

pytestmark = pytest.mark.server


def _long_job(studio: StudioProcess) -> dict:
    client = studio.client()
    return pretrain(client, upload(client, "tiny.txt")["id"], max_steps=100_000)


@pytest.mark.parametrize("shared_studio", ["postgres"], indirect=True)
def test_many_sse_clients_share_one_redis_subscription(shared_studio: StudioProcess) -> None:
    studio = shared_studio
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


# A hard-killed worker's job, resumed by a fresh worker, and a stopped worker leaving the registry: see
# tests/reliability/test_worker_loss.py (slow: it waits out a lease).
