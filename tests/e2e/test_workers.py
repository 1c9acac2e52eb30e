"""The worker registry with real processes: each worker registers itself at start, keeps its row fresh and says
which job it runs (on the warm studios). That a stopped worker removes its row is checked where a test stops one:
tests/e2e/test_server_mode.py."""

import time
from collections.abc import Callable
from typing import Any

import httpx

from backend.worker.service import alias
from tests.e2e.test_loop import pretrain, upload
from tests.support import StudioProcess


def wait_for(check: Callable[[], Any], what: str, timeout: float = 60) -> Any:
    """Poll until `check()` returns something truthy; return it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := check():
            return result
        time.sleep(0.3)
    raise TimeoutError(f"timed out waiting for {what}")


def workers(client: httpx.Client) -> dict[str, dict[str, Any]]:
    """The live workers by queue."""
    return {w["queue"]: w for w in client.get("/api/workers").json()["items"] if w["live"]}


def test_workers_register_and_report_their_job(shared_studio: StudioProcess) -> None:
    studio = shared_studio
    client = studio.client()
    both = wait_for(lambda: (w := workers(client)) and len(w) == 2 and w, "a training and an analysis worker")
    training = both["studio"]
    assert both["studio.analysis"]["name"] != training["name"]
    assert (training["device"], training["cuda"], training["current_job_id"]) == ("cpu", False, None)
    details = training["details"]
    assert details["torch"] and details["cpu_count"] >= 1 and details["ram_bytes"] > 0
    assert details["bitsandbytes"] is False and details["gpu_count"] == 0 and details["data_parallel_processes"] == 1
    assert training["device_memory_bytes"] == details["ram_bytes"]  # a CPU worker trains in RAM
    # The row stays fresh (STUDIO_HEARTBEAT_SECONDS=1 in these tests).
    wait_for(lambda: workers(client)["studio"]["last_seen_at"] > training["last_seen_at"], "a refreshed row")

    job = pretrain(client, upload(client, "tiny.txt")["id"], max_steps=100_000)
    wait_for(lambda: workers(client)["studio"]["current_job_id"] == job["id"], "the running job on the worker")
    # The job names the worker that ran it; the list shows it under an alias to a non-admin (host and pid hidden).
    ran_on = client.get(f"/api/jobs/{job['id']}").json()["worker"]
    assert training["name"] in (ran_on, alias(ran_on, training["queue"]))
    client.post(f"/api/jobs/{job['id']}/cancel")
    studio.wait_job(client, job["id"], ("cancelled",), timeout=60)
    wait_for(lambda: workers(client)["studio"]["current_job_id"] is None, "the worker idle again")
