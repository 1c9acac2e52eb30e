"""The live jobs list (GET /api/jobs/stream) on both backends: a snapshot of the visible jobs on connect, then a
`job` event when a job appears or changes; another user's jobs never show. The app runs under a real uvicorn
server (the stream never ends, and the test client would wait for its end), read with httpx streaming."""

import io
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from tests.support import free_port

FIXTURES = Path(__file__).parent.parent / "fixtures"


class LiveApp:
    """The studio's API in a uvicorn thread of this process (the database is the test's own)."""

    def __init__(self) -> None:
        from backend.main import create_app

        self.port = free_port()
        config = uvicorn.Config(create_app(), host="127.0.0.1", port=self.port, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> "LiveApp":
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)

    def client(self, token: str) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"}
        return httpx.Client(base_url=f"http://127.0.0.1:{self.port}", headers=headers, timeout=10)


def _token(email: str) -> str:
    from backend.auth.service import create_user, issue_token
    from backend.db import session_scope

    with session_scope() as s:
        return issue_token(s, user=create_user(s, email=email, password="password123"), kind="api")


@pytest.fixture
def live(app_env: dict[str, str]) -> Iterator[LiveApp]:
    with LiveApp() as app:
        yield app


def _events(response: httpx.Response) -> Iterator[tuple[str, dict[str, Any]]]:
    """(event, data) pairs as they arrive; a read waits at most the client's timeout (10 s)."""
    name, data = "message", ""
    for line in response.iter_lines():
        if line.startswith("event:"):
            name = line.split(":", 1)[1].strip()
        elif line.startswith("data:"):
            data += line.split(":", 1)[1].strip()
        elif not line and data:
            yield name, json.loads(data)
            name, data = "message", ""


def _next_job(events: Iterator[tuple[str, dict[str, Any]]], **want: object) -> dict[str, Any]:
    """The first `job` event matching `want` (earlier ones are skipped)."""
    for name, data in events:
        if name == "job" and all(data.get(k) == v for k, v in want.items()):
            return data
    raise AssertionError(f"the stream ended before a job event with {want}")


def _submit(client: httpx.Client, name: str) -> dict[str, Any]:
    res = client.post("/api/datasets", files={"file": ("tiny.txt", io.BytesIO((FIXTURES / "tiny.txt").read_bytes()))})
    assert res.status_code == 201, res.text
    body = {"kind": "pretrain", "architecture": "tiny", "dataset_id": res.json()["id"], "name": name}
    res = client.post("/api/jobs", json={**body, "hyperparameters": {"max_steps": 5}})
    assert res.status_code == 201, res.text
    return dict(res.json())


def test_snapshot_then_new_and_changed_jobs_arrive_live(live: LiveApp) -> None:
    alice, bob = live.client(_token("alice@example.com")), live.client(_token("bob@example.com"))
    older = _submit(alice, "older")
    hidden = _submit(bob, "bobs-run")
    newer = _submit(alice, "newer")
    with alice.stream("GET", "/api/jobs/stream") as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = _events(response)
        # The snapshot: every visible job, newest first, each a full job view.
        first, second = next(events), next(events)
        assert [first[1]["id"], second[1]["id"]] == [newer["id"], older["id"]]
        assert first[1]["name"] == "newer" and first[1]["status"] == "queued" and first[1]["dataset_name"]
        # Changes arrive without a reconnect: a job created by its owner, then cancelled.
        _submit(bob, "bobs-second")  # not Alice's: must never appear
        created = _submit(alice, "created-live")
        seen = _next_job(events, id=created["id"])
        assert seen["name"] == "created-live"
        alice.post(f"/api/jobs/{created['id']}/cancel").raise_for_status()
        assert _next_job(events, id=created["id"], status="cancelled")["cancel_requested"] is True
    # A reconnect replays the snapshot, the change included; Bob's jobs were never in Alice's stream.
    with alice.stream("GET", "/api/jobs/stream") as response:
        events = _events(response)
        replay = [next(events)[1] for _ in range(3)]
    assert [j["id"] for j in replay] == [created["id"], newer["id"], older["id"]]
    assert replay[0]["status"] == "cancelled"
    assert hidden["id"] not in [j["id"] for j in replay]


def test_the_stream_needs_a_login(live: LiveApp) -> None:
    with httpx.Client(base_url=f"http://127.0.0.1:{live.port}", timeout=10) as anonymous:
        assert anonymous.get("/api/jobs/stream").status_code == 401
