"""The estimate before launch: parameter counts match the real models, steps follow the settings, memory and
FLOPs grow with what is trained, and bad input is a 422 naming the field."""

import io
import json
import math
from pathlib import Path

from fastapi.testclient import TestClient

from backend.method.shape import model_shape
from backend.model.presets import PRESETS, parameter_count
from tests.api.test_analysis import PAIRS, base_model, compute_queued, upload

__all__ = ["base_model"]  # fixture shared with the analysis test

FIXTURES = Path(__file__).parent.parent / "fixtures"


def _dataset(client: TestClient) -> int:
    res = client.post("/api/datasets", files={"file": ("tiny.txt", io.BytesIO((FIXTURES / "tiny.txt").read_bytes()))})
    return int(res.json()["id"])


def test_parameter_count_agrees_with_the_preset_formula() -> None:
    for preset in PRESETS.values():
        assert model_shape(preset).total_parameters() == parameter_count(preset)


def test_pretrain_estimate(client: TestClient) -> None:
    dataset_id = _dataset(client)
    body = {
        "kind": "pretrain",
        "architecture": "tiny",
        "dataset_id": dataset_id,
        "hyperparameters": {"max_steps": 100, "batch_size": 4, "max_length": 64},
    }
    res = client.post("/api/jobs/estimate", json=body)
    assert res.status_code == 200, res.text
    est = res.json()
    assert est["total_parameters"] == parameter_count(PRESETS["tiny"])
    assert est["trainable_parameters"] == est["total_parameters"]  # from scratch: every weight
    assert est["steps"] == 100 and est["tokens"] == 100 * 4 * 64
    assert est["flops"] == est["flops_per_token"] * est["tokens"]
    # 6 per weight that multiplies (the untied input embedding is a lookup) plus attention's 12·L·d·T.
    tiny = PRESETS["tiny"]
    matmul_weights = est["total_parameters"] - tiny["vocab_size"] * tiny["hidden_size"]
    attention = 12 * tiny["num_hidden_layers"] * tiny["hidden_size"] * 64
    assert est["flops_per_token"] == 6 * matmul_weights + attention
    assert est["memory_bytes"] > 4 * est["total_parameters"]
    assert not est["tokens_exact"] and est["notes"]  # no statistics yet: says the token count is a guess

    # Accumulation multiplies the tokens per step; checkpointing lowers the memory.
    body["hyperparameters"] |= {"gradient_accumulation_steps": 2, "gradient_checkpointing": True}
    more = client.post("/api/jobs/estimate", json=body).json()
    assert more["tokens"] == 2 * est["tokens"] and more["memory_bytes"] < est["memory_bytes"]

    # Nothing was stored.
    assert client.get("/api/jobs").json()["items"] == []


def test_estimate_names_bad_fields(client: TestClient) -> None:
    dataset_id = _dataset(client)
    bad = client.post(
        "/api/jobs/estimate",
        json={
            "kind": "pretrain",
            "architecture": "tiny",
            "dataset_id": dataset_id,
            "hyperparameters": {"max_length": 1},
        },
    )
    assert bad.status_code == 422 and "max_length" in bad.text
    missing = client.post("/api/jobs/estimate", json={"kind": "pretrain", "architecture": "tiny", "dataset_id": 99999})
    assert missing.status_code == 422 and "dataset_id" in missing.text


def test_estimate_from_odd_base_models(client: TestClient, tmp_path: Path) -> None:
    """A config.json with nonsense sizes gets an estimate that says so, never a 500; an importing model a 422."""
    from backend.db import Model, User, session_scope

    (tmp_path / "config.json").write_text('{"hidden_size": "x", "num_hidden_layers": [2], "vocab_size": 1e400}')
    with session_scope() as s:
        owner = s.query(User).one()
        odd = Model(owner_id=owner.id, name="odd", source="local", path=str(tmp_path), parameters=1000)
        busy = Model(owner_id=owner.id, name="busy", source="gguf", path=str(tmp_path), status="importing")
        s.add_all([odd, busy])
        s.flush()
        odd_id, busy_id = odd.id, busy.id
    dataset_id = _dataset(client)
    body = {"kind": "finetune", "dataset_id": dataset_id, "method": "lora", "objective": "causal_lm"}
    res = client.post("/api/jobs/estimate", json={**body, "base_model": odd_id})
    assert res.status_code == 200, res.text
    est = res.json()
    assert est["total_parameters"] == 1000 and est["fits"] is None
    assert any("config.json" in n for n in est["notes"])
    busy_res = client.post("/api/jobs/estimate", json={**body, "base_model": busy_id})
    assert busy_res.status_code == 422 and "importing" in busy_res.text


def test_estimate_uses_the_dry_run_once_the_worker_counted_tokens(client: TestClient, base_model: int) -> None:
    """No statistics: tokens guessed from the size. Once the worker computed them for the same (dataset, base
    model, objective, max_length), the estimate's tokens are exact and it carries the dry run, whatever the
    batch size the statistics were asked with (it changes no token count)."""
    pairs = upload(client, "pairs.jsonl", PAIRS)
    body = {
        "kind": "finetune",
        "dataset_id": pairs["id"],
        "base_model": base_model,
        "method": "lora",
        "objective": "sft",
        "validation_dataset_id": None,
        "hyperparameters": {"max_length": 64, "batch_size": 2, "epochs": 1, "validation_fraction": 0},
    }
    before = client.post("/api/jobs/estimate", json=body).json()
    assert before["dry_run"] is None and not before["tokens_exact"]
    assert any("file size" in n for n in before["notes"])

    stats = f"/api/datasets/{pairs['id']}/stats?base_model={base_model}&objective=sft&max_length=64&batch_size=4"
    assert client.post(stats).json()["status"] == "queued"
    compute_queued("stats")
    counted = client.get(stats).json()["result"]

    after = client.post("/api/jobs/estimate", json=body).json()
    assert after["tokens_exact"] and after["dry_run"] == counted
    assert after["tokens_per_epoch"] == counted["supervised_tokens"] > 0
    assert counted["masked_tokens"] > 0  # SFT masks the prompts: trained < total
    assert after["steps"] == math.ceil(counted["examples"] / 2)  # 5 records, 2 per step
    assert not any("file size" in n for n in after["notes"])

    # Another max_length is another count: back to the guess.
    body["hyperparameters"]["max_length"] = 128
    assert client.post("/api/jobs/estimate", json=body).json()["dry_run"] is None


def test_pretrain_dry_run_needs_a_borrowed_tokenizer(client: TestClient, base_model: int) -> None:
    """Pretraining with its own tokenizer has nothing to count with before launch; with a borrowed one it has."""
    text = upload(client, "text.jsonl", [{"text": f"Story number {i} is short."} for i in range(12)])
    body = {"kind": "pretrain", "architecture": "tiny", "dataset_id": text["id"], "hyperparameters": {"max_length": 32}}
    own = client.post("/api/jobs/estimate", json=body).json()
    assert own["dry_run"] is None and any("trained on the dataset at launch" in n for n in own["notes"])

    stats = f"/api/datasets/{text['id']}/stats?base_model={base_model}&objective=causal_lm&max_length=32"
    client.post(stats)
    compute_queued("stats")
    assert client.post("/api/jobs/estimate", json=body).json()["dry_run"] is None  # still its own tokenizer
    borrowed = client.post("/api/jobs/estimate", json={**body, "tokenizer_model": base_model}).json()
    assert borrowed["tokens_exact"] and borrowed["dry_run"]["objective"] == "causal_lm"
    assert borrowed["tokens_per_epoch"] == borrowed["dry_run"]["supervised_tokens"] > 0


def test_time_comes_from_the_speed_finished_runs_reached(client: TestClient) -> None:
    """FLOP/s = flops_per_token x tokens between a past run's first and last counted points / their seconds;
    the evaluation point after the last training point carries no token count and is skipped."""
    from datetime import timedelta

    from sqlalchemy import select

    from backend.db import Job, JobMetric, User, Worker, session_scope, utcnow
    from backend.queue import QUEUE

    dataset_id = _dataset(client)
    body = {
        "kind": "pretrain",
        "architecture": "tiny",
        "dataset_id": dataset_id,
        "hyperparameters": {"max_steps": 100, "batch_size": 4, "max_length": 64},
    }
    with session_scope() as s:
        s.add(Worker(name="w-cpu", queue=QUEUE, device="cpu", device_memory_bytes=8 << 30))
        owner = s.scalars(select(User)).one()
        job = Job(
            owner_id=owner.id, name="past", kind="pretrain", status="succeeded", objective="causal_lm",
            architecture="tiny", dataset_id=dataset_id, device="cpu", resolved_config={"flops_per_token": 1e6},
        )  # fmt: skip
        s.add(job)
        s.flush()
        t0 = utcnow() - timedelta(minutes=5)
        for i in range(30):  # more rows than one look reads
            s.add(JobMetric(job_id=job.id, step=i + 1, values={"loss": 1.0, "tokens_seen": 1000.0 * i},
                            created_at=t0 + timedelta(seconds=i)))  # fmt: skip
        s.add(JobMetric(job_id=job.id, step=30, values={"eval_loss": 0.9}, created_at=t0 + timedelta(seconds=40)))
    est = client.post("/api/jobs/estimate", json=body).json()
    rate = 1e6 * 29_000 / 29  # 1e9 FLOP/s
    assert est["device"] == "cpu"
    assert math.isclose(est["seconds"], est["flops"] / rate, rel_tol=1e-6)


def test_a_classifier_adapter_counts_its_new_head(client: TestClient, base_model: int, tmp_path: Path) -> None:
    """PEFT trains a classifier's new head beside the adapter: once the statistics count the labels, the estimate's
    trainable parameters include hidden x labels (as PEFT's count does)."""
    config = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2}
    config |= {"num_attention_heads": 4, "num_key_value_heads": 4, "vocab_size": 300}
    (tmp_path / "base" / "config.json").write_text(json.dumps(config))
    records = [{"text": t, "label": label} for t, label in (("good", "pos"), ("bad", "neg"), ("meh", "mid"))] * 4
    data = upload(client, "labels.jsonl", records)
    hp = {"max_length": 64, "batch_size": 2, "epochs": 1}
    body = {"kind": "finetune", "dataset_id": data["id"], "base_model": base_model, "hyperparameters": hp}
    for method in ("lora", "ia3"):
        before = client.post("/api/jobs/estimate", json={**body, "method": method}).json()
        assert before["objective"] == "classification"
        assert any("classification head" in n for n in before["notes"])
    stats = f"/api/datasets/{data['id']}/stats?base_model={base_model}&objective=classification&max_length=64"
    client.post(stats)
    compute_queued("stats")
    for method in ("lora", "ia3"):
        # Another max_length has no statistics (so no head counted): the difference is the head.
        before = client.post("/api/jobs/estimate", json={**body, "method": method, "hyperparameters": {}}).json()
        after = client.post("/api/jobs/estimate", json={**body, "method": method}).json()
        assert after["dry_run"] is not None and not any("classification head" in n for n in after["notes"])
        assert after["trainable_parameters"] == before["trainable_parameters"] + 64 * 3
