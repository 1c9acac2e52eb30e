"""Playground generations over the API: bad requests are 422s naming the field, other people's generations are
404s, rows are created, listed and streamed (replayed after Last-Event-ID) as the worker writes them."""

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from backend.auth.service import create_user, issue_token
from backend.db import Job, User, session_scope
from backend.playground.lifecycle import append_output, claim_generation, finish_generation
from tests.api.test_models import model_files, zipped

FIXTURES = Path(__file__).parent.parent / "fixtures"
ADAPTER_FILES = {"adapter_config.json": b'{"peft_type": "LORA"}', "adapter_model.safetensors": b"not read by the API"}


@dataclass
class Setup:
    model_id: int
    job_id: int  # a LoRA SFT job with adapter/ and checkpoints/checkpoint-5 on disk
    queued_job_id: int  # a job with nothing trained yet


def _write(directory: Path, files: dict[str, bytes]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (directory / name).write_bytes(data)


def _job(owner_id: int, model_id: int, dataset_id: int, status: str) -> int:
    with session_scope() as s:
        job = Job(
            owner_id=owner_id,
            name=f"ft-{status}",
            kind="finetune",
            status=status,
            method="lora",
            objective="sft",
            dataset_id=dataset_id,
            base_model_id=model_id,
            hyperparameters={},
        )
        s.add(job)
        s.flush()
        return job.id


@pytest.fixture
def setup(client: TestClient, app_env: dict[str, str]) -> Setup:
    """A base model (uploaded) and two jobs on it; the finished one's outputs as its worker leaves them."""
    res = client.post("/api/models", files={"file": ("base.zip", io.BytesIO(zipped(model_files())))})
    assert res.status_code == 201, res.text
    model_id = res.json()["id"]
    data = (FIXTURES / "alpaca_small.json").read_bytes()
    dataset_id = client.post("/api/datasets", files={"file": ("alpaca.json", io.BytesIO(data))}).json()["id"]
    owner_id = client.get("/api/me").json()["id"]
    done = _job(owner_id, model_id, dataset_id, "succeeded")
    jobs = Path(app_env["STUDIO_DATA_DIR"]) / "jobs" / str(done)
    tokenizer = {k: v for k, v in model_files().items() if k.startswith("tokenizer")}
    _write(jobs / "adapter", {**ADAPTER_FILES, **tokenizer})
    _write(jobs / "checkpoints" / "checkpoint-5", {**ADAPTER_FILES, "trainer_state.json": b"{}"})
    _write(jobs / "checkpoints" / "checkpoint-9", ADAPTER_FILES)  # cut short: no trainer_state.json
    return Setup(model_id=model_id, job_id=done, queued_job_id=_job(owner_id, model_id, dataset_id, "queued"))


def _bad_bodies(s: Setup) -> list[tuple[dict[str, Any], str]]:
    return [
        ({"model_id": s.model_id}, "prompt"),
        ({"prompt": "", "model_id": s.model_id}, "prompt"),
        ({"prompt": "a\x00b", "model_id": s.model_id}, "prompt"),
        ({"prompt": "hi"}, "model_id"),
        ({"prompt": "hi", "model_id": s.model_id, "job_id": s.job_id}, "model_id"),
        ({"prompt": "hi", "model_id": s.model_id, "checkpoint": "checkpoint-5"}, "checkpoint"),
        ({"prompt": "hi", "job_id": s.job_id, "checkpoint": "../../etc"}, "checkpoint"),
        ({"prompt": "hi", "job_id": s.job_id, "checkpoint": "checkpoint-99"}, "checkpoint-5"),
        ({"prompt": "hi", "job_id": s.job_id, "checkpoint": "checkpoint-9"}, "checkpoint"),
        ({"prompt": "hi", "model_id": s.model_id, "max_new_tokens": 0}, "max_new_tokens"),
        ({"prompt": "hi", "model_id": s.model_id, "max_new_tokens": 1025}, "max_new_tokens"),
        ({"prompt": "hi", "model_id": s.model_id, "temperature": 2.5}, "temperature"),
        ({"prompt": "hi", "model_id": s.model_id, "top_p": 0}, "top_p"),
        ({"prompt": "hi", "model_id": s.model_id, "sideways": 1}, "sideways"),
        ({"prompt": "hi", "model_id": 999}, "model_id"),
        ({"prompt": "hi", "job_id": 999}, "job_id"),
        ({"prompt": "hi", "job_id": s.queued_job_id}, "no trained adapter or model yet"),
    ]


def test_bad_requests_name_the_field(client: TestClient, setup: Setup) -> None:
    for body, named in _bad_bodies(setup):
        res = client.post("/api/generations", json=body)
        assert res.status_code == 422, (body, res.text)
        assert named in res.text, (body, named, res.text)
    assert client.get("/api/generations").json()["items"] == []


def test_create_list_and_read(client: TestClient, setup: Setup) -> None:
    res = client.post("/api/generations", json={"prompt": "Name a colour.", "model_id": setup.model_id})
    assert res.status_code == 201, res.text
    base = res.json()
    assert (base["status"], base["output"], base["model_id"], base["job_id"]) == ("queued", "", setup.model_id, None)
    # No chat template in the base's tokenizer: the prompt goes in as raw text.
    assert base["params"] == {
        "max_new_tokens": 128,
        "temperature": 0.0,
        "top_p": 1.0,
        "chat": False,
        "task": "generate",
    }
    assert base["target"] == f"model base (#{setup.model_id})"

    body = {"prompt": "Name a colour.", "job_id": setup.job_id, "max_new_tokens": 16, "temperature": 0.7}
    tuned = client.post("/api/generations", json=body).json()
    assert tuned["params"]["chat"] is True  # an SFT job is asked the way it trained
    early = client.post("/api/generations", json={**body, "checkpoint": "checkpoint-5", "chat": False}).json()
    assert (early["checkpoint"], early["params"]["chat"]) == ("checkpoint-5", False)
    assert early["target"] == f"job ft-succeeded (#{setup.job_id}), checkpoint-5"

    ids = [g["id"] for g in client.get("/api/generations").json()["items"]]
    assert ids == [early["id"], tuned["id"], base["id"]]  # newest first
    by_job = client.get("/api/generations", params={"job_id": setup.job_id}).json()["items"]
    assert [g["id"] for g in by_job] == [early["id"], tuned["id"]]
    by_model = client.get("/api/generations", params={"model_id": setup.model_id}).json()["items"]
    assert [g["id"] for g in by_model] == [base["id"]]
    assert client.get(f"/api/generations/{tuned['id']}").json() == tuned
    assert client.get("/api/generations/999").status_code == 404


def _events(text: str) -> list[tuple[str, str, dict[str, Any]]]:
    """(event, id, data) of an SSE body."""
    out = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "event" in fields:
            out.append((fields["event"], fields.get("id", ""), json.loads(fields["data"])))
    return out


def test_stream_replays_the_answer_and_resumes(client: TestClient, setup: Setup) -> None:
    gid = client.post("/api/generations", json={"prompt": "hi", "model_id": setup.model_id}).json()["id"]
    # What the worker does, through the same functions: claim, append in pieces, finish.
    assert claim_generation(gid) and not claim_generation(gid)
    append_output(gid, "Hello, ")
    append_output(gid, "wörld")
    finish_generation(gid)
    events = _events(client.get(f"/api/generations/{gid}/stream").text)
    assert [e[0] for e in events] == ["status", "token", "end"]
    assert events[1][1:] == ("12", {"text": "Hello, wörld"})  # the id counts characters sent
    assert events[2][2] == {"status": "done", "error": None}
    # A reconnect after 7 characters gets only the rest.
    tail = _events(client.get(f"/api/generations/{gid}/stream", headers={"Last-Event-ID": "7"}).text)
    assert [(e[0], e[2].get("text")) for e in tail] == [("status", None), ("token", "wörld"), ("end", None)]
    assert client.get(f"/api/generations/{gid}").json()["output"] == "Hello, wörld"


def test_a_failure_ends_the_stream_with_its_reason(client: TestClient, setup: Setup) -> None:
    gid = client.post("/api/generations", json={"prompt": "hi", "job_id": setup.job_id}).json()["id"]
    claim_generation(gid)
    finish_generation(gid, error="RuntimeError: out of memory")
    events = _events(client.get(f"/api/generations/{gid}/stream").text)
    assert events[-1][0] == "end" and events[-1][2] == {"status": "failed", "error": "RuntimeError: out of memory"}
    read = client.get(f"/api/generations/{gid}").json()
    assert (read["status"], read["error"]) == ("failed", "RuntimeError: out of memory")


def test_an_answer_whose_worker_went_away_is_failed(client: TestClient, setup: Setup) -> None:
    from datetime import timedelta

    from backend.db import Generation, utcnow
    from backend.work.lease import LeaseLost, holding
    from backend.work.reaper import sweep

    old, fresh = (
        client.post("/api/generations", json={"prompt": "hi", "job_id": setup.job_id}).json()["id"] for _ in "ab"
    )
    leases = [claim_generation(gid, "w1") for gid in (old, fresh)]
    assert None not in leases
    append_output(old, "Half an ")
    with session_scope() as s:  # its worker went silent: the last heartbeat is older than the lease
        row = s.get(Generation, old)
        assert row is not None
        row.heartbeat_at = utcnow() - timedelta(minutes=10)
    swept = sweep()
    assert (swept.requeued["generation"], swept.ended["generation"]) == ([], [old])  # never asked twice
    failed = client.get(f"/api/generations/{old}").json()
    assert (failed["status"], failed["output"]) == ("failed", "Half an ")
    assert failed["error"] == "the worker (w1) stopped before finishing this answer"
    assert client.get(f"/api/generations/{fresh}").json()["status"] == "running"
    # The worker comes back: what it writes now is refused, and the failure stays.
    lost = leases[0]
    assert lost is not None
    with holding(lost):
        with pytest.raises(LeaseLost):
            append_output(old, "answer")
        finish_generation(old)
    assert client.get(f"/api/generations/{old}").json() == failed


def test_other_users_see_nothing(client: TestClient, setup: Setup) -> None:
    gid = client.post("/api/generations", json={"prompt": "hi", "job_id": setup.job_id}).json()["id"]
    with session_scope() as s:
        other: User = create_user(s, email="other@example.com", password="password123")
        headers = {"Authorization": f"Bearer {issue_token(s, user=other, kind='api')}"}
    assert client.get(f"/api/generations/{gid}", headers=headers).status_code == 404
    assert client.get(f"/api/generations/{gid}/stream", headers=headers).status_code == 404
    assert client.get("/api/generations", headers=headers).json()["items"] == []
    # Nor can they use the owner's job or (unshared) model.
    res = client.post("/api/generations", json={"prompt": "hi", "job_id": setup.job_id}, headers=headers)
    assert res.status_code == 422 and "job_id" in res.text
    res = client.post("/api/generations", json={"prompt": "hi", "model_id": setup.model_id}, headers=headers)
    assert res.status_code == 422 and "model_id" in res.text
    assert client.get("/api/generations", headers={"Authorization": ""}).status_code == 401


def test_playground_page_and_job_link(client: TestClient, setup: Setup) -> None:
    page = client.get(f"/playground?job_id={setup.job_id}")
    assert page.status_code == 200
    assert f'<option value="{setup.job_id}" selected>' in page.text
    assert f'<option value="{setup.model_id}">' in page.text
    from_model = client.get(f"/playground?model_id={setup.model_id}")
    assert f'<option value="{setup.model_id}" selected>' in from_model.text
    assert 'href="/playground"' in page.text  # the nav link
    # A deep link to a job that has not finished still offers it (its checkpoints can answer).
    assert (
        f'<option value="{setup.queued_job_id}" selected>'
        in client.get(f"/playground?job_id={setup.queued_job_id}").text
    )
    assert client.get("/playground?job_id=999").status_code == 404
    assert f'href="/playground?job_id={setup.job_id}"' in client.get(f"/jobs/{setup.job_id}").text
    # An unfinished job's link is there but hidden: the page reveals it when the run ends, without a reload.
    assert f'href="/playground?job_id={setup.queued_job_id}" hidden>' in client.get(f"/jobs/{setup.queued_job_id}").text
