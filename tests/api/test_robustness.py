"""Odd input is a 4xx naming the problem, never a 500; state changes that race are decided in the database."""

import io
import json

import pytest
from fastapi.testclient import TestClient

HUGE = 2**31  # one past the largest key of a PostgreSQL integer column


@pytest.fixture
def text_dataset(client: TestClient) -> int:
    return int(client.post("/api/datasets", files={"file": ("t.txt", io.BytesIO(b"some text\n"))}).json()["id"])


def test_out_of_range_ids_are_4xx(client: TestClient) -> None:
    for path in (
        f"/api/jobs/{HUGE}", f"/api/datasets/{HUGE}", f"/api/models/{HUGE}", "/api/jobs/0", f"/jobs/{HUGE}",
        "/jobs/" + "9" * 5000, "/compare?ids=" + "9" * 5000,
    ):  # fmt: skip
        assert client.get(path).status_code == 422, path
    body = {"kind": "pretrain", "architecture": "tiny", "dataset_id": HUGE}
    assert client.post("/api/jobs", json=body).status_code == 422
    assert client.get(f"/api/jobs/{HUGE - 1}").status_code == 404


def test_unknown_addresses_are_json_for_the_api_and_a_page_for_people(client: TestClient) -> None:
    api = client.get("/api/no-such-thing")
    assert api.status_code == 404 and api.json() == {"detail": "Not Found"}
    assert client.get("/static/no-such-file.js").status_code == 404
    page = client.get("/no/such-page")
    assert page.status_code == 404 and page.headers["content-type"].startswith("text/html")
    assert "There is no page at /no/such-page" in page.text and 'id="error-back"' in page.text
    wrong_method = client.post("/jobs")
    assert wrong_method.status_code == 405 and "Method Not Allowed" in wrong_method.text


def test_nul_nan_and_infinity_are_refused(client: TestClient, text_dataset: int) -> None:
    base = {"kind": "pretrain", "architecture": "tiny", "dataset_id": text_dataset}
    res = client.post("/api/jobs", json={**base, "name": "a\x00b"})
    assert res.status_code == 422 and "name" in res.text
    for bad in ("NaN", "Infinity", "-Infinity"):
        raw = '{"kind": "pretrain", "architecture": "tiny", "dataset_id": %d, "hyperparameters": {"learning_rate": %s}}'
        res = client.post("/api/jobs", content=raw % (text_dataset, bad), headers={"Content-Type": "application/json"})
        assert res.status_code == 422 and "learning_rate" in res.text, res.text
    res = client.post("/api/datasets", files={"file": ("t.txt", io.BytesIO(b"x\n"))}, data={"name": "n\x00"})
    assert res.status_code == 422
    assert client.post("/api/auth/login", json={"email": "a\x00@b", "password": "x"}).status_code == 422


@pytest.mark.parametrize(
    ("name", "content", "needle"),
    [
        ("deep.json", b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        ("deep.jsonl", b'{"text": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n", "nested too deeply"),
        ("sur.jsonl", b'{"text": "bad \\ud800 escape"}\n', "lone surrogate"),
    ],
)
def test_pathological_json_is_a_422(client: TestClient, name: str, content: bytes, needle: str) -> None:
    res = client.post("/api/datasets", files={"file": (name, io.BytesIO(content))})
    assert res.status_code == 422 and needle in res.text, res.text


def test_pretraining_needs_text(client: TestClient) -> None:
    alpaca = b'{"instruction": "a", "output": "b"}\n'
    ds = client.post("/api/datasets", files={"file": ("a.jsonl", io.BytesIO(alpaca))}).json()
    res = client.post("/api/jobs", json={"kind": "pretrain", "architecture": "tiny", "dataset_id": ds["id"]})
    assert res.status_code == 422 and "dataset_id" in res.text


def test_cancel_and_claim_are_decided_in_the_database(client: TestClient, text_dataset: int) -> None:
    from backend.job.lifecycle import claim_job, finish_job, heartbeat

    body = {"kind": "pretrain", "architecture": "tiny", "dataset_id": text_dataset}
    queued = client.post("/api/jobs", json=body).json()
    client.post(f"/api/jobs/{queued['id']}/cancel")
    assert claim_job(queued["id"], "w1") is None  # cancelled before a worker got it: never runs

    running = client.post("/api/jobs", json=body).json()
    assert claim_job(running["id"], "w1") is not None
    assert claim_job(running["id"], "w2") is None  # a second delivery is a no-op
    assert heartbeat(running["id"], step=1, total_steps=10) is False
    job = client.post(f"/api/jobs/{running['id']}/cancel").json()
    assert (job["status"], job["cancel_requested"]) == ("running", True)
    assert heartbeat(running["id"], step=2, total_steps=10) is True  # the worker stops at its next step
    finish_job(running["id"], "cancelled")
    finish_job(running["id"], "succeeded")  # a late, confused finish does not overwrite the end
    assert client.get(f"/api/jobs/{running['id']}").json()["status"] == "cancelled"


def _lose(job_id: int) -> None:
    """What a worker that died (or stalled) leaves: a lease whose last heartbeat is older than the lease."""
    from datetime import timedelta

    from sqlalchemy import update

    from backend.db import Job, session_scope, utcnow

    with session_scope() as s:
        s.execute(update(Job).where(Job.id == job_id).values(heartbeat_at=utcnow() - timedelta(hours=1)))


def _messages(client: TestClient, job_id: int) -> list[str]:
    return [e["message"] for e in client.get(f"/api/jobs/{job_id}/events").json()]


def test_a_lost_job_is_queued_again_until_its_attempts_are_spent(client: TestClient, text_dataset: int) -> None:
    from backend.job.lifecycle import claim_job, finish_job, heartbeat, record_points
    from backend.work.lease import LeaseLost, holding
    from backend.work.reaper import sweep

    job = client.post("/api/jobs", json={"kind": "pretrain", "architecture": "tiny", "dataset_id": text_dataset}).json()
    job_id = job["id"]
    stalled = claim_job(job_id, "w1")
    assert stalled is not None and stalled.attempt == 1
    with holding(stalled):
        assert heartbeat(job_id, step=3, total_steps=10) is False
    _lose(job_id)
    swept = sweep()
    assert (swept.requeued["job"], swept.ended["job"]) == ([job_id], [])
    after = client.get(f"/api/jobs/{job_id}").json()
    assert (after["status"], after["error"], after["current_step"]) == ("queued", None, 0)
    assert (after["attempt"], after["attempt_limit"]) == (1, 4)
    assert "worker w1 lost at step 3: no checkpoint yet, starting over from step 0 (attempt 2 of 4)" in _messages(
        client, job_id
    )

    # The stalled worker wakes up: its lease is gone, so its writes are refused and it cannot end the job.
    with holding(stalled):
        with pytest.raises(LeaseLost):
            heartbeat(job_id, step=5, total_steps=10)
        with pytest.raises(LeaseLost):
            record_points(job_id, [(5, {"loss": 1.0})])
        finish_job(job_id, "succeeded")
    assert client.get(f"/api/jobs/{job_id}").json()["status"] == "queued"
    assert client.get(f"/api/jobs/{job_id}/metrics").json() == []
    # A caller holding no lease (not a worker) still learns the job is no longer running.
    assert heartbeat(job_id, step=5, total_steps=10) is True

    # Each lost worker costs an attempt: the fourth (STUDIO_MAX_ATTEMPTS) is the last.
    for attempt in (2, 3, 4):
        won = claim_job(job_id, f"w{attempt}")
        assert won is not None and won.attempt == attempt
        _lose(job_id)
        swept = sweep()
        expected = ([job_id], []) if attempt < 4 else ([], [job_id])
        assert (swept.requeued["job"], swept.ended["job"]) == expected
    failed = client.get(f"/api/jobs/{job_id}").json()
    error = "worker w4 lost at step 0 on attempt 4 of 4: no attempts left (STUDIO_MAX_ATTEMPTS=4)"
    assert (failed["status"], failed["error"], failed["attempt"]) == ("failed", error, 4)
    assert error in _messages(client, job_id)


def test_a_lost_job_that_was_being_cancelled_or_paused_ends_so(client: TestClient, text_dataset: int) -> None:
    from backend.job.lifecycle import claim_job
    from backend.work.reaper import sweep

    body = {"kind": "pretrain", "architecture": "tiny", "dataset_id": text_dataset}
    cancelling, pausing = (client.post("/api/jobs", json=body).json()["id"] for _ in range(2))
    for job_id in (cancelling, pausing):
        assert claim_job(job_id, "w1") is not None
        _lose(job_id)
    assert client.post(f"/api/jobs/{cancelling}/cancel").json()["cancel_requested"]
    assert client.post(f"/api/jobs/{pausing}/pause").json()["pause_requested"]
    swept = sweep()
    assert (swept.requeued["job"], sorted(swept.ended["job"])) == ([], [cancelling, pausing])
    assert client.get(f"/api/jobs/{cancelling}").json()["status"] == "cancelled"
    paused = client.get(f"/api/jobs/{pausing}").json()
    assert (paused["status"], paused["resume_checkpoint"]) == ("paused", None)
    assert any("while pausing; paused (no checkpoint to resume from)" in m for m in _messages(client, pausing))


def test_broker_down_keeps_the_job_queued_until_the_sweep_sends_it(client: TestClient, text_dataset: int) -> None:
    from datetime import timedelta

    from sqlalchemy import update

    import backend.queue
    from backend.config import get_settings
    from backend.db import Job, session_scope, utcnow
    from backend.queue import QUEUE
    from backend.work.reaper import sweep
    from tests.api.live_workers import register_worker

    register_worker(QUEUE)  # a live worker it fits: placement sends it (no broker is asked while none is live)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("STUDIO_BROKER_URL", "redis://127.0.0.1:9/0")  # nothing listens on port 9
        get_settings.cache_clear()
        backend.queue._app = None
        res = client.post("/api/jobs", json={"kind": "pretrain", "architecture": "tiny", "dataset_id": text_dataset})
    get_settings.cache_clear()
    backend.queue._app = None
    assert res.status_code == 201, res.text
    job = res.json()
    assert (job["status"], job["error"]) == ("queued", None)
    assert "the task queue is unreachable; the job stays queued and is sent when it is back" in _messages(
        client, job["id"]
    )
    register_worker(QUEUE, job_id=job["id"] + 1000)  # the only training worker is busy
    assert sweep().resent["job"] == []  # sent (or tried) just now: not yet
    with session_scope() as s:  # STUDIO_REDELIVER_SECONDS later, the broker back
        s.execute(update(Job).where(Job.id == job["id"]).values(sent_at=utcnow() - timedelta(minutes=5)))
    assert sweep().resent["job"] == []  # no worker could take it now: its copy would only wait in the broker
    register_worker(QUEUE)  # idle now
    assert sweep().resent["job"] == [job["id"]]
    assert client.get(f"/api/jobs/{job['id']}").json()["status"] == "queued"


def test_api_logout_revokes_the_session(client: TestClient) -> None:
    client.headers.pop("Authorization")
    client.headers["Origin"] = "http://testserver"  # as a browser sends it: cookie writes need it (CSRF)
    client.post("/api/auth/login", json={"email": "owner@example.com", "password": "password123"})
    cookie = client.cookies.get("studio_session")
    assert client.post("/api/auth/logout", headers={"X-CSRF-Token": client.cookies["studio_csrf"]}).status_code == 204
    assert client.get("/api/me", cookies={"studio_session": cookie}).status_code == 401


DEEP = "[" * 100_000 + "]" * 100_000


@pytest.mark.parametrize(
    ("record", "field"),
    [
        ({"conversations": [{"from": "human", "value": "hi"}, {"from": "function_call", "value": DEEP}]}, "value"),
        ({"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}], "tools": DEEP}, "tools"),
        ({"messages": [{"role": "user", "content": "hi"}], "tools": "[" * 70 + "]" * 70}, "tools"),
    ],
)
def test_deep_json_inside_a_string_field_is_a_422_naming_line_and_field(
    client: TestClient, record: dict, field: str
) -> None:
    valid = {key: value for key, value in record.items() if key != "tools"}
    if field == "value":
        valid = {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]}
    content = (json.dumps(valid) + "\n" + json.dumps(record) + "\n").encode()
    res = client.post("/api/datasets", files={"file": ("deep.jsonl", io.BytesIO(content))})
    assert res.status_code == 422, res.text
    assert "line 2" in res.text and field in res.text and "max_json_depth" in res.text, res.text
    res = client.post("/api/datasets/inspect", files={"file": ("deep.jsonl", io.BytesIO(content))})
    assert res.status_code == 200, res.text
    (error,) = res.json()["errors"]
    assert error["line"] == 2 and error["field"].endswith(field) and "nested too deeply" in error["message"]


def test_a_job_its_worker_could_not_checkpoint_in_the_grace_resumes_from_its_newest_checkpoint(
    client: TestClient, text_dataset: int
) -> None:
    """A shutdown whose grace ran out mid-step hands the job back as the reaper would: from the newest complete
    checkpoint, the points after it dropped, and the attempt not counted against STUDIO_MAX_ATTEMPTS."""
    from backend.job.checkpoints import MARKER, checkpoint_dir
    from backend.job.lifecycle import claim_job, heartbeat, record_points
    from backend.work.lease import holding
    from backend.work.reaper import hand_back

    job_id = client.post(
        "/api/jobs", json={"kind": "pretrain", "architecture": "tiny", "dataset_id": text_dataset}
    ).json()["id"]
    leaving = claim_job(job_id, "w1")
    assert leaving is not None
    with holding(leaving):
        for step in range(1, 28):
            record_points(job_id, [(step, {"loss": 1.0})])
        heartbeat(job_id, step=27, total_steps=60)
        newest = checkpoint_dir(job_id) / "checkpoint-20"
        newest.mkdir(parents=True)
        (newest / MARKER).write_text("{}")
        (checkpoint_dir(job_id) / "checkpoint-25").mkdir()  # cut short by the exit: no marker
        hand_back(leaving)
    job = client.get(f"/api/jobs/{job_id}").json()
    assert (job["status"], job["resume_checkpoint"], job["current_step"]) == ("queued", "checkpoint-20", 20)
    assert (job["attempt"], job["attempt_limit"]) == (1, 5)  # the shutdown did not use up an attempt
    steps = [m["step"] for m in client.get(f"/api/jobs/{job_id}/metrics").json()]
    assert steps == list(range(1, 21))
    # Counted from the shutdown on: the next attempt is the first that counts.
    assert "worker w1 lost at step 27: resuming from checkpoint-20 (attempt 1 of 4)" in _messages(client, job_id)
