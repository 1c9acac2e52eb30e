"""The services under the studio go away and come back: a Redis restart (every queued message lost) and a
PostgreSQL outage (connections cut, new ones refused). Nothing is lost and no person has to step in."""

import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.conftest import PG_ADMIN_URL
from tests.reliability.faults import (
    Proxy,
    RedisServer,
    events,
    fresh_database,
    loss_steps,
    server_studio,
    submit,
    wait_running,
)

pytestmark = [pytest.mark.slow, pytest.mark.server]


def test_redis_restart_loses_no_queued_job(database: str, redis_server: RedisServer, tmp_path: Path) -> None:
    studio = server_studio(database, redis_server, tmp_path / "data", tmp_path / "logs").__enter__()
    try:
        client = studio.client()
        running = submit(client, max_steps=400, checkpoint_steps=None)
        wait_running(client, running["id"], 2)
        waiting = submit(client, max_steps=20)  # the only worker is busy: it waits in the database, not in Redis

        redis_server.kill()  # nothing kept on disk: the queued message is gone
        time.sleep(10)
        redis_server.start()  # same port, empty
        # The worker's next task comes only from the sweep: free the worker, then watch the queued job run.
        assert client.post(f"/api/jobs/{running['id']}/cancel").status_code == 200
        studio.wait_job(client, running["id"], ("cancelled",), timeout=120)
        done = studio.wait_job(client, waiting["id"], ("succeeded", "failed"), timeout=180)
        assert done["status"] == "succeeded", events(client, waiting["id"])

        # Submitted while Redis is down to a free worker: accepted and queued, then sent once Redis is back.
        # (While the worker is still busy the job is not sent at all: placement waits in the database.)
        deadline = time.monotonic() + 30
        while any(w["busy"] for w in client.get("/api/workers").json()["items"]) and time.monotonic() < deadline:
            time.sleep(0.2)
        redis_server.kill()
        late = submit(client, max_steps=10)
        assert late["status"] == "queued"
        assert any("queue is unreachable" in m for m in events(client, late["id"]))
        redis_server.start()
        done = studio.wait_job(client, late["id"], ("succeeded", "failed"), timeout=180)
        assert done["status"] == "succeeded", events(client, late["id"])
    finally:
        studio.__exit__(None, None, None)


def test_database_outage_costs_no_step_and_no_point(redis_server: RedisServer, tmp_path: Path) -> None:
    upstream = urlsplit(PG_ADMIN_URL)
    proxy = Proxy((upstream.hostname or "127.0.0.1", upstream.port or 5432))
    proxy.restore()
    with fresh_database() as direct:
        through_proxy = direct.replace(f":{upstream.port or 5432}/", f":{proxy.port}/")
        # A lease longer than the outage: the outage must not look like a lost worker.
        studio = server_studio(
            through_proxy, redis_server, tmp_path / "data", tmp_path / "logs", STUDIO_LEASE_SECONDS="90"
        ).__enter__()
        try:
            client = studio.client()
            steps = 300
            job = submit(client, max_steps=steps, checkpoint_steps=100)
            wait_running(client, job["id"], 10)

            proxy.cut()
            cut_at = time.monotonic()
            res = client.get(f"/api/jobs/{job['id']}")
            assert res.status_code == 503 and res.json()["service"] == "database", res.text
            assert "database is unreachable" in res.json()["detail"]
            health = client.get("/api/health")
            assert health.status_code == 503 and health.json()["database"].startswith("unreachable")
            time.sleep(max(0.0, 30 - (time.monotonic() - cut_at)))  # a 30 s outage
            proxy.restore()

            done = studio.wait_job(client, job["id"], ("succeeded", "failed"), timeout=400)
            assert done["status"] == "succeeded", events(client, job["id"])
            assert done["attempt"] == 1  # never taken for lost
            assert loss_steps(client, job["id"]) == list(range(1, steps + 1))  # every point, once
            assert client.get("/api/health").json()["database"] == "ok"
        finally:
            studio.__exit__(None, None, None)
            proxy.cut()
