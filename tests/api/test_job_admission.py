"""Before a job is stored: the dry run's pre-flight problems are shown by the estimate and refused by POST /api/jobs,
and a job whose memory estimate exceeds every live worker's memory is refused unless the body says `force`."""

import json
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import func, select

from backend.db import Job, Model, Worker, session_scope, utcnow
from backend.queue import QUEUE
from tests.api.test_analysis import base_model, compute_queued, upload
from tests.support import stored

__all__ = ["base_model"]  # fixture shared with the analysis test

LONG = "Tell me everything about the owl, the fox, the field and the long quiet night. " * 4


def sft_body(dataset_id: int, model_id: int, **hp: Any) -> dict[str, Any]:
    return {
        "kind": "finetune",
        "dataset_id": dataset_id,
        "base_model": model_id,
        "method": "lora",
        "objective": "sft",
        "hyperparameters": {"max_length": 64, "batch_size": 2, "max_steps": 2, "validation_fraction": 0, **hp},
    }


def jobs_stored() -> int:
    with session_scope() as s:
        return int(s.scalar(select(func.count()).select_from(Job)) or 0)


def test_the_dry_run_problems_block_the_launch(client: TestClient, base_model: int) -> None:
    records = [{"prompt": LONG if i < 8 else "Name a bird.", "completion": "The owl."} for i in range(10)]
    dataset = upload(client, "long_prompts.jsonl", records)
    body = sft_body(dataset["id"], base_model)
    assert client.post("/api/jobs/estimate", json=body).json()["problems"] == []  # no dry run yet: nothing known

    stats = f"/api/datasets/{dataset['id']}/stats?base_model={base_model}&objective=sft&max_length=64&batch_size=2"
    assert client.post(stats).status_code == 200
    compute_queued("stats")
    (problem,) = client.post("/api/jobs/estimate", json=body).json()["problems"]
    assert problem["field"] == "max_length"
    assert problem["message"].startswith("only 2 of 10 records fit in max_length=64: raise it to ")

    refused = client.post("/api/jobs", json=body)
    assert refused.status_code == 422, refused.text
    assert refused.json()["code"] == "preflight" and refused.json()["field"] == "max_length"
    assert refused.json()["detail"] == problem["message"]
    assert jobs_stored() == 0  # nothing half-written

    # Accepting the loss is a setting, not a bypass: with min_kept_fraction lowered the job is queued.
    body["hyperparameters"]["min_kept_fraction"] = 0.2
    assert client.post("/api/jobs/estimate", json=body).json()["problems"] == []
    created = client.post("/api/jobs", json=body)
    assert created.status_code == 201
    # A clone is admitted the same way: back to the default share, it is refused too.
    clone = client.post(f"/api/jobs/{created.json()['id']}/clone", json={"hyperparameters": {"min_kept_fraction": 0.9}})
    assert clone.status_code == 422 and clone.json()["code"] == "preflight", clone.text
    assert jobs_stored() == 1


def test_a_single_text_is_held_out_by_characters(client: TestClient, base_model: int) -> None:
    """Packed text is split by characters: one long document still leaves an eval part, so no problem."""
    dataset = upload(client, "one.jsonl", [{"text": LONG * 3}])
    body = {
        "kind": "finetune",
        "dataset_id": dataset["id"],
        "base_model": base_model,
        "method": "lora",
        "objective": "causal_lm",
        "hyperparameters": {"max_length": 64, "batch_size": 2, "max_steps": 2, "validation_fraction": 0.2},
    }
    query = {"base_model": base_model, "objective": "causal_lm", "max_length": 64, "batch_size": 2}
    assert client.post(f"/api/datasets/{dataset['id']}/stats", params=query).status_code == 200
    compute_queued("stats")
    est = client.post("/api/jobs/estimate", json=body).json()
    assert est["dry_run"] is not None and est["problems"] == []


def test_a_job_too_big_for_every_live_worker_is_refused_unless_forced(client: TestClient, base_model: int) -> None:
    dataset = upload(client, "small.jsonl", [{"prompt": "Name a bird.", "completion": "The owl."}] * 4)
    with session_scope() as s:
        now = utcnow()
        for name, memory in (("small-a", 2**20), ("small-b", 2**21)):  # 1 and 2 MiB: nothing fits
            s.add(Worker(name=name, queue=QUEUE, device_memory_bytes=memory, started_at=now, last_seen_at=now))
    write_config(base_model)  # a size the estimate can count: millions of parameters, far more than 2 MiB
    body = sft_body(dataset["id"], base_model, batch_size=4, max_length=256)
    est = client.post("/api/jobs/estimate", json=body).json()
    assert est["fits"] is False and est["device_memory_bytes"] == 2**21, est

    refused = client.post("/api/jobs", json=body)
    assert refused.status_code == 422, refused.text
    error = refused.json()
    assert error["code"] == "does_not_fit" and error["memory_bytes"] == est["memory_bytes"]
    assert "of memory; the live training worker with the most" in error["detail"]
    assert "gradient_checkpointing" in error["detail"] and '"force": true' in error["detail"]
    assert jobs_stored() == 0

    forced = client.post("/api/jobs", json={**body, "force": True})
    assert forced.status_code == 201, forced.text
    assert "force" not in forced.json().get("hyperparameters", {})

    # A worker with room for it: the job fits there, and no force is needed.
    with session_scope() as s:
        now = utcnow()
        s.add(Worker(name="big", queue=QUEUE, device_memory_bytes=64 * 2**30, started_at=now, last_seen_at=now))
    assert client.post("/api/jobs/estimate", json=body).json()["fits"] is True
    assert client.post("/api/jobs", json=body).status_code == 201


def write_config(model_id: int) -> None:
    """The base fixture is a tokenizer alone; a config.json gives it a size."""
    with session_scope() as s:
        model = s.get(Model, model_id)
        assert model is not None
        config = {"hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4, "vocab_size": 8000}
        (stored(model.path) / "config.json").write_text(json.dumps(config))
