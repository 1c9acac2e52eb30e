"""Pause, resume, clone, checkpoints and watch-prompt samples through the API (no worker: the test plays it)."""

import io
import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

FIXTURES = Path(__file__).parent.parent / "fixtures"


@pytest.fixture
def text_dataset(client: TestClient) -> int:
    res = client.post("/api/datasets", files={"file": ("tiny.txt", io.BytesIO((FIXTURES / "tiny.txt").read_bytes()))})
    return int(res.json()["id"])


@pytest.fixture
def job(client: TestClient, text_dataset: int) -> dict:
    body = {
        "kind": "pretrain",
        "architecture": "tiny",
        "dataset_id": text_dataset,
        "hyperparameters": {"max_steps": 30, "learning_rate": 1e-3},
        "watch_prompts": ["Once upon a time"],
    }
    res = client.post("/api/jobs", json=body)
    assert res.status_code == 201, res.text
    return res.json()


def fake_checkpoint(job_id: int, step: int) -> Path:
    """What the Trainer leaves on disk: a checkpoint-<step> folder whose trainer_state.json is written last."""
    from backend.job.checkpoints import checkpoint_dir

    path = checkpoint_dir(job_id) / f"checkpoint-{step}"
    path.mkdir(parents=True)
    (path / "model.safetensors").write_bytes(b"\0" * 100)
    (path / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return path


def test_watch_prompts_are_stored_and_validated(client: TestClient, text_dataset: int, job: dict) -> None:
    assert job["watch_prompts"] == ["Once upon a time"] and job["attempts"] == 0
    base = {"kind": "pretrain", "architecture": "tiny", "dataset_id": text_dataset}
    for prompts in (["a"] * 6, ["x" * 2001], [""], ["nul\x00"]):
        res = client.post("/api/jobs", json={**base, "watch_prompts": prompts})
        assert res.status_code == 422, prompts
        assert any("watch_prompts" in err["loc"] for err in res.json()["detail"])


def test_pause_needs_a_running_job_and_ends_paused(client: TestClient, job: dict) -> None:
    from backend.job.lifecycle import beat, claim_job, finish_job

    res = client.post(f"/api/jobs/{job['id']}/pause")
    assert res.status_code == 409 and "only a running job" in res.text
    assert claim_job(job["id"], "w1")
    paused = client.post(f"/api/jobs/{job['id']}/pause").json()
    assert (paused["status"], paused["pause_requested"]) == ("running", True)
    assert beat(job["id"], step=3, total_steps=30) == "pause"
    checkpoint = fake_checkpoint(job["id"], 3)
    finish_job(job["id"], "paused", resume_checkpoint=str(checkpoint))
    after = client.get(f"/api/jobs/{job['id']}").json()
    assert (after["status"], after["pause_requested"], after["resume_checkpoint"]) == (
        "paused",
        False,
        "checkpoint-3",  # the name only: where the server keeps files is not the client's business
    )


def test_resume_requeues_from_the_latest_checkpoint(client: TestClient, job: dict) -> None:
    from backend.job.lifecycle import claim_job, finish_job

    claim_job(job["id"], "w1")
    finish_job(job["id"], "failed", error="boom")
    res = client.post(f"/api/jobs/{job['id']}/resume")
    assert res.status_code == 409 and "no checkpoint" in res.text

    fake_checkpoint(job["id"], 10)
    fake_checkpoint(job["id"], 20)
    (fake_checkpoint(job["id"], 25) / "trainer_state.json").unlink()  # cut short mid-save: not a checkpoint
    listed = client.get(f"/api/jobs/{job['id']}/checkpoints").json()
    assert [(c["name"], c["step"]) for c in listed] == [("checkpoint-10", 10), ("checkpoint-20", 20)]
    assert all(c["size_bytes"] > 100 and "path" not in c for c in listed)

    resumed = client.post(f"/api/jobs/{job['id']}/resume").json()
    assert (resumed["status"], resumed["attempts"], resumed["error"]) == ("queued", 1, None)
    assert resumed["resume_checkpoint"] == "checkpoint-20"
    assert client.post(f"/api/jobs/{job['id']}/resume").status_code == 409  # already queued
    assert claim_job(job["id"], "w2")  # the worker takes it again


def test_cancelled_and_paused_jobs_resume_but_succeeded_ones_do_not(client: TestClient, job: dict) -> None:
    from backend.job.lifecycle import claim_job, finish_job

    fake_checkpoint(job["id"], 5)
    client.post(f"/api/jobs/{job['id']}/cancel")  # cancelled while queued
    assert client.post(f"/api/jobs/{job['id']}/resume").json()["status"] == "queued"
    claim_job(job["id"], "w1")
    finish_job(job["id"], "paused")
    cancelled = client.post(f"/api/jobs/{job['id']}/cancel").json()  # a paused job cancels at once
    assert cancelled["status"] == "cancelled"
    client.post(f"/api/jobs/{job['id']}/resume")
    claim_job(job["id"], "w1")
    finish_job(job["id"], "succeeded")
    res = client.post(f"/api/jobs/{job['id']}/resume")
    assert res.status_code == 409 and "succeeded" in res.text


def test_clone_copies_the_inputs_with_overrides(client: TestClient, job: dict) -> None:
    res = client.post(f"/api/jobs/{job['id']}/clone", json={"hyperparameters": {"learning_rate": 5e-4}})
    assert res.status_code == 201, res.text
    clone = res.json()
    assert clone["id"] != job["id"] and clone["cloned_from_id"] == job["id"]
    assert clone["status"] == "queued" and clone["name"] == f"{job['name']} (clone)"
    assert clone["hyperparameters"] == {**job["hyperparameters"], "learning_rate": 5e-4}
    assert (clone["kind"], clone["dataset_id"], clone["architecture"]) == ("pretrain", job["dataset_id"], "tiny")
    assert clone["watch_prompts"] == job["watch_prompts"]

    plain = client.post(f"/api/jobs/{job['id']}/clone")  # no body: an exact copy
    assert plain.status_code == 201 and plain.json()["hyperparameters"] == job["hyperparameters"]
    bad = client.post(f"/api/jobs/{job['id']}/clone", json={"hyperparameters": {"learning_rate": -1}})
    assert bad.status_code == 422 and "learning_rate" in bad.text


def test_samples_are_listed_in_order(client: TestClient, job: dict) -> None:
    from backend.job.lifecycle import record_samples

    assert client.get(f"/api/jobs/{job['id']}/samples").json() == []
    record_samples(job["id"], 10, [("Once upon a time", "there was")])
    record_samples(job["id"], 20, [("Once upon a time", "there was a fox")])
    samples = client.get(f"/api/jobs/{job['id']}/samples").json()
    assert [(s["step"], s["output"]) for s in samples] == [(10, "there was"), (20, "there was a fox")]


def test_another_user_cannot_control_the_job(client: TestClient, job: dict) -> None:
    from backend.auth.service import create_user, issue_token
    from backend.db import session_scope

    with session_scope() as s:
        other = create_user(s, email="other@example.com", password="password123", is_admin=False)
        token = issue_token(s, user=other, kind="api")
    headers = {"Authorization": f"Bearer {token}"}
    for action in ("pause", "resume", "clone"):
        assert client.post(f"/api/jobs/{job['id']}/{action}", headers=headers).status_code == 404
    for listing in ("checkpoints", "samples"):
        assert client.get(f"/api/jobs/{job['id']}/{listing}", headers=headers).status_code == 404
