"""Job submission: validation names the field; references are checked; queued jobs can be cancelled."""

import io
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

FIXTURES = Path(__file__).parent.parent / "fixtures"


@pytest.fixture
def text_dataset(client: TestClient) -> int:
    res = client.post("/api/datasets", files={"file": ("tiny.txt", io.BytesIO((FIXTURES / "tiny.txt").read_bytes()))})
    return int(res.json()["id"])


def _pretrain(dataset_id: int, **hp: object) -> dict[str, object]:
    return {"kind": "pretrain", "architecture": "tiny", "dataset_id": dataset_id, "hyperparameters": hp}


@pytest.mark.parametrize(
    ("hp", "field"),
    [
        ({"learning_rate": 0}, "learning_rate"),
        ({"learning_rate": "fast"}, "learning_rate"),
        ({"batch_size": 0}, "batch_size"),
        ({"max_steps": -3}, "max_steps"),
        ({"max_length": 100000}, "max_length"),
        ({"validation_fraction": 1}, "validation_fraction"),
        ({"checkpoint_steps": 0}, "checkpoint_steps"),
        ({"eval_steps": 0}, "eval_steps"),
        ({"warmup_steps": -1}, "warmup_steps"),
        ({"seed": -1}, "seed"),
        ({"epochs": 0}, "epochs"),
        ({"no_such_knob": 1}, "no_such_knob"),
    ],
)
def test_bad_hyperparameters_name_the_field(client: TestClient, text_dataset: int, hp: dict, field: str) -> None:
    res = client.post("/api/jobs", json=_pretrain(text_dataset, **hp))
    assert res.status_code == 422, res.text
    locs = [err["loc"] for err in res.json()["detail"]]
    assert any(field in loc for loc in locs), locs
    assert client.get("/api/jobs").json()["items"] == []


def test_bad_job_fields(client: TestClient, text_dataset: int) -> None:
    cases = [
        ({"kind": "pretrain", "architecture": "huge", "dataset_id": text_dataset}, "architecture"),
        ({"kind": "finetune", "dataset_id": text_dataset}, "base_model"),
        ({"kind": "finetune", "dataset_id": text_dataset, "base_model": 999}, "base_model"),
        ({"kind": "pretrain", "architecture": "tiny", "dataset_id": 999}, "dataset_id"),
        ({"kind": "sideways", "dataset_id": text_dataset}, "kind"),
    ]
    for body, field in cases:
        res = client.post("/api/jobs", json=body)
        assert res.status_code == 422, (body, res.text)
        assert field in res.text, (field, res.text)


def test_create_list_and_cancel_a_queued_job(client: TestClient, text_dataset: int) -> None:
    res = client.post("/api/jobs", json={**_pretrain(text_dataset, max_steps=5), "name": "pt"})
    assert res.status_code == 201, res.text
    job = res.json()
    assert (job["status"], job["kind"], job["name"]) == ("queued", "pretrain", "pt")
    assert [j["id"] for j in client.get("/api/jobs").json()["items"]] == [job["id"]]
    res = client.post(f"/api/jobs/{job['id']}/cancel")
    assert res.json()["status"] == "cancelled"
    events = [e["message"] for e in client.get(f"/api/jobs/{job['id']}/events").json()]
    assert events == ["pretrain job queued", "cancelled before it started"]
    # The stream replays everything and ends, since the job is final.
    stream = client.get(f"/api/jobs/{job['id']}/stream").text
    assert "event: log" in stream and "event: end" in stream
    # After Last-Event-ID, only what is newer.
    tail = client.get(f"/api/jobs/{job['id']}/stream", headers={"Last-Event-ID": "0:1"}).text
    assert "pretrain job queued" not in tail and "cancelled before it started" in tail


def test_sft_needs_instruction_data(client: TestClient, text_dataset: int) -> None:
    from backend.db import Model, User, session_scope

    with session_scope() as s:
        owner = s.query(User).one()
        s.add(Model(owner_id=owner.id, name="m", source="local", path="/nowhere", shared=True))
    model_id = client.get("/api/models").json()["items"][0]["id"]
    body = {"kind": "finetune", "dataset_id": text_dataset, "base_model": str(model_id), "objective": "sft"}
    res = client.post("/api/jobs", json=body)
    assert res.status_code == 422 and "objective" in res.text
    res = client.post("/api/jobs", json={**body, "objective": "causal_lm"})
    assert res.status_code == 201, res.text
    assert res.json()["method"] == "lora"


def test_separate_validation_dataset(client: TestClient, text_dataset: int) -> None:
    other_text = client.post("/api/datasets", files={"file": ("v.txt", io.BytesIO(b"held out text\n"))}).json()
    alpaca = b'{"instruction": "a", "output": "b"}\n'
    other_shape = client.post("/api/datasets", files={"file": ("a.jsonl", io.BytesIO(alpaca))}).json()
    body = {"kind": "pretrain", "architecture": "tiny", "dataset_id": text_dataset}
    res = client.post("/api/jobs", json={**body, "validation_dataset_id": other_shape["id"]})
    assert res.status_code == 422 and "validation_dataset_id" in res.text
    res = client.post("/api/jobs", json={**body, "validation_dataset_id": 999})
    assert res.status_code == 422 and "validation_dataset_id" in res.text
    res = client.post("/api/jobs", json={**body, "validation_dataset_id": other_text["id"]})
    assert res.status_code == 201 and res.json()["validation_dataset_id"] == other_text["id"]


def test_datasets_used_by_jobs_cannot_be_deleted(client: TestClient, text_dataset: int) -> None:
    held = client.post("/api/datasets", files={"file": ("v.txt", io.BytesIO(b"held out text\n"))}).json()
    body = {"kind": "pretrain", "architecture": "tiny", "dataset_id": text_dataset}
    res = client.post("/api/jobs", json={**body, "validation_dataset_id": text_dataset})
    assert res.status_code == 422 and "validation_dataset_id" in res.text
    assert client.post("/api/jobs", json={**body, "validation_dataset_id": held["id"]}).status_code == 201
    for dataset_id in (text_dataset, held["id"]):
        res = client.delete(f"/api/datasets/{dataset_id}")
        assert res.status_code == 409 and "used by jobs" in res.text
