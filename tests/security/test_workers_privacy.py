"""`/api/workers` and its stream show every user the shared workers and the queue depth, but another user's job
only to an admin; the hostname and the process details (pid, interpreter) are for admins too."""

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi.testclient import TestClient

from backend.auth.service import issue_token
from backend.db import Job, Model, User, Worker, session_scope, utcnow
from backend.queue import QUEUE
from backend.worker.service import alias
from tests.api.test_jobs_stream import LiveApp
from tests.support import password_hash

DETAILS = {"gpu_count": 1, "bitsandbytes": True, "torch": "2.5", "pid": 4242, "python": "3.12.1"}


@dataclass
class Shared:
    alice_job: int
    bob_job: int
    bob: str  # tokens
    admin: str


def _user(email: str, *, is_admin: bool = False) -> tuple[int, str]:
    with session_scope() as s:
        user = User(email=email, password_hash=password_hash("password123"), is_admin=is_admin)
        s.add(user)
        s.flush()
        return user.id, issue_token(s, user=user, kind="api")


def _running_job(owner_id: int, model_id: int, dataset_id: int, worker: str) -> int:
    with session_scope() as s:
        job = Job(
            owner_id=owner_id, name=f"job of {owner_id}", kind="finetune", status="running", method="lora",
            objective="sft", dataset_id=dataset_id, base_model_id=model_id, hyperparameters={},
        )  # fmt: skip
        s.add(job)
        s.flush()
        now = utcnow()
        s.add(
            Worker(
                name=worker, hostname="gpu-box-7", queue=QUEUE, device="cuda:0", cuda=True,
                device_memory_bytes=80 * 1024**3, details=DETAILS, current_job_id=job.id, started_at=now,
                last_seen_at=now,
            )
        )  # fmt: skip
        return job.id


@pytest.fixture
def shared(client: TestClient) -> Shared:
    """Alice (the `client` fixture's user) and Bob each have a job running on a worker of their own."""
    alice_id = client.get("/api/me").json()["id"]
    bob_id, bob = _user("bob@example.com")
    _, admin = _user("admin@example.com", is_admin=True)
    with session_scope() as s:
        model = Model(owner_id=alice_id, name="base", source="local", path="/nowhere", shared=True)
        s.add(model)
        s.flush()
        model_id = model.id
    data = b'{"prompt": "Capital of France?", "completion": "Paris"}\n'
    dataset_id = client.post("/api/datasets", files={"file": ("a.jsonl", data)}).json()["id"]
    return Shared(
        alice_job=_running_job(alice_id, model_id, dataset_id, "worker-1@gpu-box-7"),
        bob_job=_running_job(bob_id, model_id, dataset_id, "worker-2@gpu-box-7"),
        bob=bob,
        admin=admin,
    )


def shown(name: str) -> str:
    """The alias other users see a worker under: its queue and a digest of its node name (host and pid inside)."""
    shown = f"{QUEUE}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"
    assert shown == alias(name, QUEUE)
    return shown


def _seen(items: list[dict[str, Any]]) -> dict[str, tuple[Any, ...]]:
    return {w["name"]: (w["current_job_id"], w["hostname"], "pid" in w["details"], w["busy"]) for w in items}


def test_each_user_sees_the_workers_but_only_their_own_job(client: TestClient, shared: Shared) -> None:
    answer = client.get("/api/workers")
    assert "gpu-box" not in answer.text  # the machine's name, in no field
    alice = answer.json()["items"]
    assert _seen(alice) == {
        shown("worker-1@gpu-box-7"): (shared.alice_job, None, False, True),
        shown("worker-2@gpu-box-7"): (None, None, False, True),  # Bob's job, Bob's business
    }
    assert all(w["details"] == {"gpu_count": 1, "bitsandbytes": True, "torch": "2.5"} for w in alice)
    assert all(w["device"] == "cuda:0" and w["device_memory_bytes"] == 80 * 1024**3 for w in alice)
    bob = client.get("/api/workers", headers={"Authorization": f"Bearer {shared.bob}"}).json()["items"]
    assert _seen(bob) == {
        shown("worker-1@gpu-box-7"): (None, None, False, True),
        shown("worker-2@gpu-box-7"): (shared.bob_job, None, False, True),
    }
    admin = client.get("/api/workers", headers={"Authorization": f"Bearer {shared.admin}"}).json()["items"]
    assert _seen(admin) == {
        "worker-1@gpu-box-7": (shared.alice_job, "gpu-box-7", True, True),
        "worker-2@gpu-box-7": (shared.bob_job, "gpu-box-7", True, True),
    }
    # The Workers page renders the same view: Bob's job is not linked on Alice's page.
    page = client.get("/workers").text
    assert f"/jobs/{shared.alice_job}" in page and f"/jobs/{shared.bob_job}" not in page
    assert ">busy<" in page  # Bob's worker is busy, with nothing to say whose job it runs


def _first_workers_event(app: LiveApp, token: str) -> dict[str, Any]:
    with app.client(token) as http, http.stream("GET", "/api/workers/stream") as response:
        assert response.status_code == 200
        event = None
        for line in response.iter_lines():
            if line.startswith("event:"):
                event = line.split(":", 1)[1].strip()
            elif line.startswith("data:") and event == "workers":
                return dict(json.loads(line.split(":", 1)[1]))
    raise AssertionError("the stream ended without a workers event")


def test_the_workers_stream_shows_each_user_the_same_view(client: TestClient, shared: Shared) -> None:
    bearer = str(client.headers["Authorization"]).removeprefix("Bearer ")
    with LiveApp() as app:
        alice, bob, admin = (_first_workers_event(app, t) for t in (bearer, shared.bob, shared.admin))
    assert alice["queued"] == bob["queued"] == admin["queued"] == 0
    assert _seen(alice["items"])[shown("worker-2@gpu-box-7")] == (None, None, False, True)
    assert _seen(bob["items"])[shown("worker-2@gpu-box-7")] == (shared.bob_job, None, False, True)
    assert _seen(admin["items"])["worker-1@gpu-box-7"] == (shared.alice_job, "gpu-box-7", True, True)
