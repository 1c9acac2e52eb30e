"""QLoRA is refused at submit unless a live training worker has CUDA and bitsandbytes; GET /api/workers."""

import io
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from backend.db import Model, User, Worker, session_scope, utcnow
from backend.queue import ANALYSIS_QUEUE, QUEUE
from backend.worker.service import alias

FIXTURES = Path(__file__).parent.parent / "fixtures"


@pytest.fixture
def qlora_body(client: TestClient) -> dict[str, Any]:
    """A finetune request with method qlora, on an alpaca dataset and a shared base model."""
    alpaca = client.post(
        "/api/datasets", files={"file": ("a.json", io.BytesIO((FIXTURES / "alpaca_small.json").read_bytes()))}
    ).json()
    with session_scope() as s:
        owner = s.query(User).one()
        s.add(Model(owner_id=owner.id, name="base", source="local", path="/nowhere", shared=True))
    model_id = client.get("/api/models").json()["items"][0]["id"]
    return {"kind": "finetune", "dataset_id": alpaca["id"], "base_model": model_id, "method": "qlora"}


def add_worker(name: str, *, cuda: bool, bitsandbytes: bool, age_seconds: float = 0, queue: str = QUEUE) -> None:
    """A worker row as workers.registry writes it (the API only reads the table)."""
    seen = utcnow() - timedelta(seconds=age_seconds)
    with session_scope() as s:
        s.add(
            Worker(
                name=name,
                hostname=name.split("@")[-1],
                queue=queue,
                device="cuda:0 NVIDIA H100 80GB HBM3" if cuda else "cpu",
                cuda=cuda,
                bf16=cuda,
                device_memory_bytes=80 * 1024**3 if cuda else 16 * 1024**3,
                details={"bitsandbytes": bitsandbytes, "gpu_count": int(cuda)},
                started_at=seen,
                last_seen_at=seen,
            )
        )


def test_qlora_without_any_live_worker_is_a_422(client: TestClient, qlora_body: dict[str, Any]) -> None:
    res = client.post("/api/jobs", json=qlora_body)
    assert res.status_code == 422, res.text
    body = res.json()
    assert body["field"] == "method"
    assert "cuda" in body["detail"].lower() and "no training worker is live" in body["detail"]
    assert "use lora" in body["detail"]
    assert client.get("/api/jobs").json()["items"] == []


def test_qlora_with_only_cpu_or_stale_workers_is_a_422_listing_them(
    client: TestClient, qlora_body: dict[str, Any]
) -> None:
    add_worker("worker-1@cpu-box", cuda=False, bitsandbytes=False)
    add_worker("worker-2@gpu-no-bnb", cuda=True, bitsandbytes=False)
    add_worker("worker-3@gpu-gone", cuda=True, bitsandbytes=True, age_seconds=3600)  # killed an hour ago
    add_worker("analysis-1@gpu", cuda=True, bitsandbytes=True, queue=ANALYSIS_QUEUE)  # does not train
    res = client.post("/api/jobs", json=qlora_body)
    assert res.status_code == 422, res.text
    detail = res.json()["detail"]
    assert "CUDA" in detail and "worker-1@cpu-box: cpu" in detail and "no bitsandbytes" in detail
    assert "gpu-gone" not in detail and "analysis-1" not in detail
    # lora needs no GPU: the same request with method lora is accepted.
    assert client.post("/api/jobs", json={**qlora_body, "method": "lora"}).status_code == 201


def test_qlora_with_a_live_cuda_worker_is_accepted(client: TestClient, qlora_body: dict[str, Any]) -> None:
    add_worker("worker-1@cpu-box", cuda=False, bitsandbytes=False)
    add_worker("worker-2@gpu-box", cuda=True, bitsandbytes=True)
    res = client.post("/api/jobs", json=qlora_body)
    assert res.status_code == 201, res.text
    assert (res.json()["method"], res.json()["status"]) == ("qlora", "queued")


def test_workers_are_listed_with_liveness(client: TestClient) -> None:
    add_worker("worker-1@gpu-box", cuda=True, bitsandbytes=True)
    add_worker("worker-2@gone", cuda=False, bitsandbytes=False, age_seconds=3600)
    items = client.get("/api/workers").json()["items"]
    # A non-admin sees each worker under an alias: a Celery node name holds the host and the pid.
    by_name = {w["name"]: w for w in items}
    gpu, gone = alias("worker-1@gpu-box", QUEUE), alias("worker-2@gone", QUEUE)
    assert set(by_name) == {gpu, gone}
    assert by_name[gpu]["live"] and not by_name[gone]["live"]
    assert by_name[gpu]["details"]["bitsandbytes"] is True
    assert by_name[gpu]["device_memory_bytes"] == 80 * 1024**3
    client.headers.pop("Authorization")
    assert client.get("/api/workers").status_code == 401
