"""The job page tells the truth: a queued job's step count, Resume only with a checkpoint (else Clone), and the
resumed step in the header at once."""

import io
import re
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from backend.db import Job, session_scope
from backend.job.checkpoints import MARKER, checkpoint_dir
from backend.job.lifecycle import beat

FIXTURES = Path(__file__).parent.parent / "fixtures"


def _job(client: TestClient, **hp: Any) -> int:
    upload = client.post(
        "/api/datasets", files={"file": ("tiny.txt", io.BytesIO((FIXTURES / "tiny.txt").read_bytes()))}
    )
    body = {"kind": "pretrain", "architecture": "tiny", "dataset_id": upload.json()["id"], "hyperparameters": hp}
    res = client.post("/api/jobs", json=body)
    assert res.status_code == 201, res.text
    return int(res.json()["id"])


def _set(job_id: int, **values: Any) -> None:
    with session_scope() as s:
        job = s.get_one(Job, job_id)
        for key, value in values.items():
            setattr(job, key, value)


def _checkpoint(job_id: int, step: int) -> None:
    folder = checkpoint_dir(job_id) / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    (folder / MARKER).write_text("")


def _total(page: str) -> str:
    found = re.search(r'<span id="job-total">([^<]*)</span>', page)
    assert found, "no step total in the header"
    return found.group(1)


def _hidden(page: str, element_id: str) -> bool:
    tag = re.search(rf'<[^>]*id="{element_id}"[^>]*>', page)
    assert tag, element_id
    return " hidden" in tag.group(0)


def test_queued_job_shows_its_planned_steps(client: TestClient) -> None:
    job_id = _job(client, max_steps=100)
    page = client.get(f"/jobs/{job_id}").text
    assert _total(page) == "100" and 'data-planned="100"' in page
    assert '<span class="progress-label">0 / 100</span>' in client.get("/jobs").text
    # Without max_steps: the launch estimate's count (epochs over the dataset's examples), never "?"; stored at
    # admission, and worked out again for a job stored without it (before admission stored it).
    by_epochs = _job(client, epochs=2)
    stored = _total(client.get(f"/jobs/{by_epochs}").text)
    assert stored.isdigit() and int(stored) >= 2
    _set(by_epochs, total_steps=None)
    assert _total(client.get(f"/jobs/{by_epochs}").text) == stored


def test_resume_is_offered_only_with_a_checkpoint(client: TestClient) -> None:
    job_id = _job(client, max_steps=20)
    _set(job_id, status="failed", current_step=7, error="worker lost")
    page = client.get(f"/jobs/{job_id}").text
    assert _hidden(page, "job-resume") and not _hidden(page, "job-no-checkpoint")
    assert 'class="btn btn-primary" id="job-clone"' in page  # Clone is the way on
    assert client.post(f"/api/jobs/{job_id}/resume").status_code == 409

    _checkpoint(job_id, 5)
    page = client.get(f"/jobs/{job_id}").text
    assert not _hidden(page, "job-resume") and _hidden(page, "job-no-checkpoint")
    assert 'class="btn" id="job-clone"' in page


def test_resumed_job_shows_the_checkpoint_step_at_once_and_keeps_it_while_preparing(client: TestClient) -> None:
    job_id = _job(client, max_steps=20)
    _checkpoint(job_id, 5)
    _set(job_id, status="paused", current_step=7, total_steps=20)
    resumed = client.post(f"/api/jobs/{job_id}/resume").json()
    assert resumed["current_step"] == 5
    page = client.get(f"/jobs/{job_id}").text
    assert '<strong id="job-step">5</strong>' in page and _total(page) == "20"
    # The worker's check-ins while it prepares the data (before training resumes) leave the progress alone.
    _set(job_id, status="running")
    assert beat(job_id, step=None, total_steps=None) == "run"
    assert client.get(f"/api/jobs/{job_id}").json()["current_step"] == 5
