"""The whole loop with real processes: upload → pretrain → watch live → fine-tune with LoRA → download → load.

Runs on both deployments: embedded (`studio up`: SQLite + SQLAlchemy broker, DB polling) and server
(`studio api` + a separate `studio worker`: PostgreSQL + Redis broker + Redis pub/sub), each the session's warm
studio (`shared_studio`) seen by a user of the test's own.
"""

import io
import shutil
import zipfile
from pathlib import Path

import httpx
import pytest

from tests.e2e.sse import read_events
from tests.support import StudioProcess, stored

FIXTURES = Path(__file__).parent.parent / "fixtures"
PRETRAIN_HP = {
    "max_steps": 40,
    "max_length": 64,
    "batch_size": 8,
    "learning_rate": 2e-3,
    "warmup_steps": 4,
    "eval_steps": 10,
    "logging_steps": 1,
}


def upload(client: httpx.Client, name: str) -> dict:
    res = client.post("/api/datasets", files={"file": (name, (FIXTURES / name).read_bytes())})
    assert res.status_code == 201, res.text
    return res.json()


def pretrain(client: httpx.Client, dataset_id: int, **hp: object) -> dict:
    """Submit a `tiny` pretrain job on `dataset_id` with PRETRAIN_HP overridden by `hp`."""
    body = {"kind": "pretrain", "architecture": "tiny", "dataset_id": dataset_id}
    res = client.post("/api/jobs", json={**body, "hyperparameters": {**PRETRAIN_HP, **hp}})
    assert res.status_code == 201, res.text
    return res.json()


def unzip(content: bytes, dest: Path) -> Path:
    with zipfile.ZipFile(io.BytesIO(content)) as zf:
        zf.extractall(dest)
    return dest


def test_upload_pretrain_watch_finetune_download(shared_studio: StudioProcess, tmp_path: Path) -> None:
    studio = shared_studio
    client = studio.client()
    text = upload(client, "tiny.txt")
    job = pretrain(client, text["id"])
    assert job["status"] == "queued"

    # Watch live: metric events arrive while the job still reports itself running, then the stream ends.
    live_points, statuses, ids = 0, [], []
    for ev in read_events(client, f"/api/jobs/{job['id']}/stream"):
        ids.append(ev.id)
        if ev.event == "job":
            statuses.append(ev.data["status"])
        elif ev.event == "metric" and statuses and statuses[-1] == "running":
            live_points += 1
        elif ev.event == "end":
            assert ev.data["status"] == "succeeded", studio.logs()
            break
    assert live_points > 0, statuses
    assert "running" in statuses

    job = client.get(f"/api/jobs/{job['id']}").json()
    assert (job["status"], job["current_step"], job["total_steps"]) == ("succeeded", 40, 40)
    metrics = client.get(f"/api/jobs/{job['id']}/metrics").json()
    losses = [m["values"]["loss"] for m in metrics if "loss" in m["values"]]
    assert len(losses) == 40 and any("eval_loss" in m["values"] for m in metrics)
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5
    assert [m["step"] for m in metrics if "loss" in m["values"]] == list(range(1, 41))

    # A reconnect with Last-Event-ID replays only what came after it.
    mid = ids[len(ids) // 2]
    replay = list(read_events(client, f"/api/jobs/{job['id']}/stream", last_event_id=mid))
    assert replay and all(int(e.id.split(":")[0]) >= int(mid.split(":")[0]) for e in replay)
    assert len([e for e in replay if e.event == "metric"]) < len(metrics)

    # The pretrained model joins the base-model list and downloads as model.zip.
    models = client.get("/api/models").json()["items"]
    base = next(m for m in models if m["job_id"] == job["id"])
    # ~0.9M with the full 2048-token vocabulary; the tiny corpus trains a smaller vocabulary.
    assert base["architecture"] == "llama" and 300_000 < base["parameters"] < 1_500_000
    arts = {a["name"] for a in client.get(f"/api/jobs/{job['id']}/artifacts").json()}
    assert "model.zip" in arts
    base_dir = unzip(client.get(f"/api/jobs/{job['id']}/artifacts/model.zip").content, tmp_path / "base")

    alpaca = upload(client, "alpaca_small.json")
    ft_body = {
        "name": "ft",
        "kind": "finetune",
        "dataset_id": alpaca["id"],
        "base_model": str(base["id"]),
        "method": "lora",
        "objective": "sft",
        # 128: some alpaca prompts take over 64 of the tiny tokenizer's tokens (the pre-flight check would refuse).
        "hyperparameters": {"max_steps": 12, "learning_rate": 2e-3, "batch_size": 4, "max_length": 128},
    }
    res = client.post("/api/jobs", json=ft_body)
    assert res.status_code == 201, res.text
    ft = studio.wait_job(client, res.json()["id"], ("succeeded", "failed", "cancelled"))
    assert ft["status"] == "succeeded", client.get(f"/api/jobs/{ft['id']}/events").json()
    assert ft["resolved_config"]["dataset"]["sha256"] == alpaca["sha256"]

    res = client.get(f"/api/jobs/{ft['id']}/artifacts/adapter.zip")
    assert res.status_code == 200
    adapter_dir = unzip(res.content, tmp_path / "adapter")
    names = {p.name for p in adapter_dir.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md", "tokenizer.json"} <= names
    card = (adapter_dir / "README.md").read_text()
    assert alpaca["sha256"] in card and "learning_rate" in card

    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), adapter_dir)
    tok = AutoTokenizer.from_pretrained(adapter_dir)
    ids = tok("Reverse the word.", return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=5, do_sample=False)
    assert out.shape[1] > ids["input_ids"].shape[1]


@pytest.mark.slow
def test_cancel_failure_and_duplicate_delivery(shared_studio: StudioProcess) -> None:
    studio = shared_studio
    client = studio.client()
    text = upload(client, "tiny.txt")
    job = pretrain(client, text["id"], max_steps=100_000)
    for ev in read_events(client, f"/api/jobs/{job['id']}/stream"):
        if ev.event == "job" and ev.data["current_step"] > 0:
            break
    assert client.post(f"/api/jobs/{job['id']}/cancel").json()["cancel_requested"] is True
    job = studio.wait_job(client, job["id"], ("cancelled", "failed", "succeeded"), timeout=60)
    assert job["status"] == "cancelled" and job["current_step"] < 100_000

    # A finetune whose base model directory vanished fails with the reason in its events ...
    pt = pretrain(client, text["id"], max_steps=3)
    studio.wait_job(client, pt["id"], ("succeeded",))
    model = next(m for m in client.get("/api/models").json()["items"] if m["job_id"] == pt["id"])
    from backend.db import Model, session_scope

    with studio.configured(), session_scope() as s:
        row = s.get(Model, model["id"])
        assert row is not None
        shutil.rmtree(stored(row.path))
    bad = client.post(
        "/api/jobs",
        json={
            "kind": "finetune",
            "dataset_id": text["id"],
            "base_model": model["id"],
            "hyperparameters": {"max_steps": 2},
        },
    ).json()
    bad = studio.wait_job(client, bad["id"], ("failed", "succeeded"))
    assert bad["status"] == "failed" and bad["error"]
    events = client.get(f"/api/jobs/{bad['id']}/events").json()
    assert any(e["level"] == "error" and "failed" in e["message"] for e in events)

    # ... and the worker goes on serving. A second delivery of the same task is a no-op.
    again = pretrain(client, text["id"], max_steps=3)
    from backend.work.kinds import JOB
    from backend.work.send import send

    with studio.configured():
        assert send(JOB, again["id"])  # the API already sent one; Celery may deliver twice
    studio.wait_job(client, again["id"], ("succeeded",))
    with studio.configured():
        assert send(JOB, again["id"])  # late duplicate after the end
    pt2 = pretrain(client, text["id"], max_steps=2)
    studio.wait_job(client, pt2["id"], ("succeeded",))  # queued behind the duplicates, so they were consumed
    started = [e for e in client.get(f"/api/jobs/{again['id']}/events").json() if e["message"].startswith("started on")]
    assert len(started) == 1
    train_points = [m for m in client.get(f"/api/jobs/{again['id']}/metrics").json() if "loss" in m["values"]]
    assert [m["step"] for m in train_points] == [1, 2, 3]
