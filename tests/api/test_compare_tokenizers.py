"""Compare's first curve is bits per byte when the runs tokenize differently; its settings diff names datasets
and models instead of giving their ids."""

from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import select

from backend.db import Dataset, Job, JobMetric, Model, User, session_scope


def _rows() -> dict[str, int]:
    """An owner's two datasets, a hub model, a pretrain run and the model it produced."""
    with session_scope() as s:
        owner = s.scalars(select(User).where(User.email == "owner@example.com")).one()
        ids: dict[str, int] = {"owner": owner.id}
        for name in ("fables", "recipes"):
            dataset = Dataset(
                owner_id=owner.id,
                name=name,
                filename=f"{name}.txt",
                path="/nowhere",
                size_bytes=1,
                sha256="0" * 64,
                format="text",
                shape="text",
                record_count=10,
            )
            s.add(dataset)
            s.flush()
            ids[name] = dataset.id
        hub = Model(owner_id=owner.id, name="smol", source="hub", path="/srv/models/7", details={"hub_id": "org/smol"})
        s.add(hub)
        s.flush()
        ids["hub"] = hub.id
        ids["scratch"] = _run(s, owner.id, ids["fables"], kind="pretrain", architecture="tiny", name="scratch")
        produced = Model(owner_id=owner.id, name="scratch-model", source="job", path="/nowhere", job_id=ids["scratch"])
        s.add(produced)
        s.flush()
        ids["produced"] = produced.id
    return ids


def _run(session: Any, owner_id: int, dataset_id: int, **fields: Any) -> int:
    """A finished run with two eval points that log bits per byte."""
    job = Job(owner_id=owner_id, dataset_id=dataset_id, objective="causal_lm", status="succeeded", **fields)
    job.method = job.method or "full"
    session.add(job)
    session.flush()
    for step, loss in ((1, 3.0), (2, 2.5)):
        values = {"loss": loss, "eval_loss": loss + 0.1, "eval_bits_per_byte": (loss + 0.1) / 3}
        session.add(JobMetric(job_id=job.id, step=step, values=values))
    job.current_step, job.final_eval_loss = 2, 2.6
    return job.id


def _finetune(ids: dict[str, int], base: str, dataset: str, name: str) -> int:
    with session_scope() as s:
        return _run(s, ids["owner"], ids[dataset], kind="finetune", method="lora", base_model_id=ids[base], name=name)


def test_runs_with_different_tokenizers_open_on_bits_per_byte(client: TestClient) -> None:
    ids = _rows()
    tuned = _finetune(ids, "hub", "recipes", "tuned")
    body = client.get("/api/jobs/compare", params={"ids": [ids["scratch"], tuned]}).json()
    assert body["first_curve"] == "eval_bits_per_byte"
    assert [r["tokenizer"] for r in body["runs"]] == ["trained by scratch", "org/smol"]
    # Names as a person knows them, never ids.
    assert body["diff"]["dataset"] == ["fables", "recipes"]
    assert body["diff"]["base_model"] == [None, "smol"]
    assert not any(key.endswith("_id") for key in body["diff"])


def test_runs_sharing_a_tokenizer_open_on_validation_loss(client: TestClient) -> None:
    ids = _rows()
    # A fine-tune of the pretrain run's model uses the tokenizer that run trained: losses per token compare.
    tuned = _finetune(ids, "produced", "fables", "tuned")
    body = client.get("/api/jobs/compare", params={"ids": [ids["scratch"], tuned]}).json()
    assert body["first_curve"] == "eval_loss"
    assert body["runs"][1]["tokenizer"] == "trained by scratch"
    assert body["diff"]["base_model"] == [None, "scratch-model"]
    assert "dataset" not in body["diff"]


def test_different_tokenizers_without_bits_per_byte_stay_on_validation_loss(client: TestClient) -> None:
    ids = _rows()
    tuned = _finetune(ids, "hub", "fables", "tuned")
    with session_scope() as s:
        for metric in s.scalars(select(JobMetric).where(JobMetric.job_id == tuned)):
            metric.values = {k: v for k, v in metric.values.items() if k != "eval_bits_per_byte"}
    body = client.get("/api/jobs/compare", params={"ids": [ids["scratch"], tuned]}).json()
    assert body["first_curve"] == "eval_loss"
