"""Weight exports over the API: refusals are 4xx naming the field, other people's jobs are 404s, the same export
is not queued twice (unless it failed or its zip is gone), and the list is read, streamed and reaped."""

import io
import json
import shutil
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from backend.auth.service import create_user, issue_token
from backend.db import Export, Job, session_scope, utcnow
from backend.export.lifecycle import (
    claim_export,
    exports_dir,
    fail_export,
    finish_export,
    load_export,
    record_progress,
)
from backend.queue import ANALYSIS_QUEUE, EXPORT_WEIGHTS
from backend.work import send
from backend.work.lease import holding
from backend.work.reaper import sweep
from tests.api.live_workers import register_worker
from tests.api.test_generations import ADAPTER_FILES, _write
from tests.api.test_models import model_files, zipped

FIXTURES = Path(__file__).parent.parent / "fixtures"
DTYPES = ("float32", "float16", "bfloat16")
EMPTY_ZIP = b"PK\x05\x06" + b"\x00" * 18


@dataclass
class Setup:
    lora_job: int  # succeeded: adapter/, checkpoints/checkpoint-5 (complete) and checkpoint-9 (cut short)
    full_job: int  # succeeded: model/
    queued_job: int  # nothing trained yet


def _job(owner_id: int, model_id: int, dataset_id: int, status: str, method: str) -> int:
    with session_scope() as s:
        job = Job(
            owner_id=owner_id,
            name=f"{method}-{status}",
            kind="finetune",
            status=status,
            method=method,
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
    """A base model and three jobs on it, with the files their workers would have left."""
    res = client.post("/api/models", files={"file": ("base.zip", io.BytesIO(zipped(model_files())))})
    assert res.status_code == 201, res.text
    model_id = res.json()["id"]
    data = (FIXTURES / "alpaca_small.json").read_bytes()
    dataset_id = client.post("/api/datasets", files={"file": ("alpaca.json", io.BytesIO(data))}).json()["id"]
    owner = client.get("/api/me").json()["id"]
    jobs = Path(app_env["STUDIO_DATA_DIR"]) / "jobs"
    tokenizer = {k: v for k, v in model_files().items() if k.startswith("tokenizer")}
    lora = _job(owner, model_id, dataset_id, "succeeded", "lora")
    _write(jobs / str(lora) / "adapter", {**ADAPTER_FILES, **tokenizer})
    _write(jobs / str(lora) / "checkpoints" / "checkpoint-5", {**ADAPTER_FILES, "trainer_state.json": b"{}"})
    _write(jobs / str(lora) / "checkpoints" / "checkpoint-9", ADAPTER_FILES)  # no trainer_state.json: cut short
    full = _job(owner, model_id, dataset_id, "succeeded", "full")
    _write(jobs / str(full) / "model", model_files())
    return Setup(lora_job=lora, full_job=full, queued_job=_job(owner, model_id, dataset_id, "queued", "lora"))


def _post(client: TestClient, job_id: int, **body: Any) -> Any:
    return client.post(f"/api/jobs/{job_id}/exports", json=body)


def _refusals(s: Setup) -> list[tuple[int, dict[str, Any], int, str]]:
    return [
        (s.lora_job, {"checkpoint": "checkpoint-99", "format": "adapter"}, 422, "checkpoint-5"),  # lists what exists
        (s.lora_job, {"checkpoint": "checkpoint-9", "format": "adapter"}, 422, "checkpoint"),
        (s.lora_job, {"checkpoint": "../../etc", "format": "adapter"}, 422, "checkpoint"),
        (s.lora_job, {"format": "model"}, 422, "adapter or merged"),
        (s.full_job, {"format": "merged"}, 422, "format"),
        (s.full_job, {"format": "adapter", "dtype": "float16"}, 422, "export it as model"),
        (s.lora_job, {"format": "gguf"}, 422, "format"),
        (s.lora_job, {}, 422, "format"),
        (s.lora_job, {"format": "adapter", "dtype": "int8"}, 422, "dtype"),
        (s.lora_job, {"format": "adapter", "sideways": 1}, 422, "sideways"),
        (s.queued_job, {"format": "adapter"}, 422, "no trained adapter or model yet"),
        (999, {"format": "adapter"}, 404, "job 999 not found"),
    ]


def test_refusals_name_the_field(client: TestClient, setup: Setup) -> None:
    for job_id, body, status, named in _refusals(setup):
        res = _post(client, job_id, **body)
        assert res.status_code == status, (body, res.text)
        assert named in res.text, (body, named, res.text)
    for job_id in (setup.lora_job, setup.full_job, setup.queued_job):
        assert client.get(f"/api/jobs/{job_id}/exports").json()["items"] == []
    assert client.get("/api/jobs/999/exports").status_code == 404


def _finish(job_id: int, export_id: int, name: str, *, claim: bool = True) -> Path:
    """What the worker does at the end: the zip in the export's folder, registered, the row done."""
    if claim:
        assert claim_export(export_id)
    path = exports_dir(job_id) / str(export_id) / name
    path.parent.mkdir(parents=True)
    path.write_bytes(b"PK\x05\x06" + b"\x00" * 18)  # an empty zip
    assert finish_export(export_id, path)
    return path


def test_create_dedupe_list_and_read(client: TestClient, setup: Setup) -> None:
    job = setup.lora_job
    res = _post(client, job, checkpoint="checkpoint-5", format="merged", dtype="float16")
    assert res.status_code == 201, res.text
    first = res.json()
    assert (first["status"], first["checkpoint"], first["format"], first["dtype"]) == (
        "queued",
        "checkpoint-5",
        "merged",
        "float16",
    )
    assert first["url"] is None and first["artifact_name"] is None
    again = _post(client, job, checkpoint="checkpoint-5", format="merged", dtype="float16")
    assert again.status_code == 200 and again.json()["id"] == first["id"]  # queued: not done twice
    final = _post(client, job, format="adapter").json()  # dtype defaults to float32
    assert (final["checkpoint"], final["dtype"]) == (None, "float32")
    ids = [e["id"] for e in client.get(f"/api/jobs/{job}/exports").json()["items"]]
    assert ids == [final["id"], first["id"]]  # newest first
    assert client.get(f"/api/exports/{first['id']}").json() == first
    assert client.get("/api/exports/999").status_code == 404

    # Running: still the same one. Failed: a new attempt.
    assert claim_export(first["id"])
    assert _post(client, job, checkpoint="checkpoint-5", format="merged", dtype="float16").status_code == 200
    fail_export(first["id"], "RuntimeError: out of memory")
    failed = client.get(f"/api/exports/{first['id']}").json()
    assert (failed["status"], failed["error"]) == ("failed", "RuntimeError: out of memory")
    retry = _post(client, job, checkpoint="checkpoint-5", format="merged", dtype="float16")
    assert retry.status_code == 201 and retry.json()["id"] != first["id"]

    # Done, its zip on disk: returned with its download address. The zip gone: exported again.
    zip_path = _finish(job, final["id"], "final-adapter-float32.zip")
    done = _post(client, job, format="adapter")
    assert done.status_code == 200 and done.json()["id"] == final["id"]
    assert done.json()["url"] == f"/api/jobs/{job}/artifacts/final-adapter-float32.zip"
    assert done.json()["artifact_name"] == "final-adapter-float32.zip" and done.json()["size_bytes"] == 22
    assert client.get(done.json()["url"]).content == zip_path.read_bytes()
    zip_path.unlink()
    assert _post(client, job, format="adapter").status_code == 201


def test_other_users_see_nothing(client: TestClient, setup: Setup) -> None:
    export = _post(client, setup.lora_job, format="adapter").json()
    with session_scope() as s:
        other = create_user(s, email="other@example.com", password="password123")
        headers = {"Authorization": f"Bearer {issue_token(s, user=other, kind='api')}"}
    job = setup.lora_job
    assert client.post(f"/api/jobs/{job}/exports", json={"format": "adapter"}, headers=headers).status_code == 404
    assert client.get(f"/api/jobs/{job}/exports", headers=headers).status_code == 404
    assert client.get(f"/api/jobs/{job}/exports/stream", headers=headers).status_code == 404
    assert client.get(f"/api/exports/{export['id']}", headers=headers).status_code == 404
    assert client.get(f"/api/jobs/{job}/exports", headers={"Authorization": ""}).status_code == 401


def _events(text: str) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "event" in fields:
            out.append((fields["event"], json.loads(fields["data"])))
    return out


def test_stream_follows_the_export_to_its_end(client: TestClient, setup: Setup) -> None:
    job = setup.lora_job
    export_id = _post(client, job, format="adapter", dtype="float16").json()["id"]
    assert claim_export(export_id)

    def worker() -> None:  # what the worker writes while the page watches
        time.sleep(0.8)
        record_progress(export_id, {"phase": "zipping", "done": 50, "total": 100, "unit": "bytes"})
        time.sleep(0.8)
        _finish(job, export_id, "final-adapter-float16.zip", claim=False)

    thread = threading.Thread(target=worker)
    thread.start()
    events = _events(client.get(f"/api/jobs/{job}/exports/stream").text)
    thread.join()
    names = [e[0] for e in events]
    assert names[0] == "exports" and names[-1] == "end" and names.count("end") == 1
    states = [e[1]["items"][0] for e in events if e[0] == "exports"]
    assert states[0]["status"] == "running" and states[-1]["status"] == "done"
    assert {"phase": "zipping", "done": 50, "total": 100, "unit": "bytes"} in [s["progress"] for s in states]
    assert all("at" not in (s["progress"] or {}) for s in states)  # the lease's heartbeat is not progress
    # A reload replays the snapshot: the finished list, then the end.
    replay = _events(client.get(f"/api/jobs/{job}/exports/stream").text)
    assert [e[0] for e in replay] == ["exports", "end"] and replay[0][1]["items"][0]["url"]


def _age(export_id: int, **columns: timedelta) -> None:
    """Move the export's `heartbeat_at` or `sent_at` that far into the past (a silent worker, a lost message)."""
    with session_scope() as s:
        row = s.get(Export, export_id)
        assert row is not None
        for column, ago in columns.items():
            setattr(row, column, utcnow() - ago)


class Broker:
    """A stand-in for the broker: refuses every message while `up` is False, else records the exports sent."""

    def __init__(self, *, up: bool) -> None:
        self.up = up
        self.sent: list[int] = []

    def send_task(self, name: str, args: list[int], queue: str) -> None:
        if not self.up:
            raise ConnectionError("broker unreachable")
        if name == EXPORT_WEIGHTS:
            self.sent.append(args[0])


def test_exports_whose_worker_went_away_are_queued_again_then_failed(
    client: TestClient, setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    broker = Broker(up=True)
    monkeypatch.setattr(send, "celery_app", lambda: broker)
    job = setup.lora_job
    dead, alive, waiting = (_post(client, job, format="adapter", dtype=d).json()["id"] for d in DTYPES)
    recent = _post(client, job, format="merged").json()["id"]
    for export_id in (dead, alive):
        assert claim_export(export_id, "w1")
    left = exports_dir(job) / str(dead) / "staging"
    left.mkdir(parents=True)  # what the dead worker half-wrote
    _age(dead, heartbeat_at=timedelta(minutes=10))
    _age(waiting, sent_at=timedelta(minutes=10))  # its message was lost: no worker claimed it
    broker.sent.clear()
    register_worker(ANALYSIS_QUEUE)  # exports are re-sent only while a worker consumes their queue
    swept = sweep()
    assert (swept.requeued["export"], swept.ended["export"], swept.resent["export"]) == ([dead], [], [waiting])
    assert sorted(broker.sent) == sorted([dead, waiting])
    read = {i: client.get(f"/api/exports/{i}").json() for i in (dead, alive, waiting, recent)}
    assert (read[dead]["status"], read[dead]["progress"], read[dead]["error"]) == ("queued", None, None)
    assert not left.exists()
    assert (read[alive]["status"], read[waiting]["status"], read[recent]["status"]) == ("running", "queued", "queued")

    # Each worker lost on it costs an attempt: the fourth (STUDIO_MAX_ATTEMPTS) is the last.
    for attempt in (2, 3, 4):
        won = claim_export(dead, f"w{attempt}")
        assert won is not None and won.attempt == attempt
        _age(dead, heartbeat_at=timedelta(minutes=10))
        swept = sweep()
        expected = ([dead], []) if attempt < 4 else ([], [dead])
        assert (swept.requeued["export"], swept.ended["export"]) == expected
    failed = client.get(f"/api/exports/{dead}").json()
    assert failed["status"] == "failed" and failed["finished_at"] is not None
    assert failed["error"] == "the worker (w4) stopped responding while exporting, on attempt 4 of 4; export again"
    assert client.get(f"/api/exports/{alive}").json()["status"] == "running"
    # A failed export is tried again on request.
    assert _post(client, job, format="adapter", dtype="float32").status_code == 201


def test_a_taken_over_export_that_finishes_late_leaves_the_next_attempt_alone(client: TestClient, setup: Setup) -> None:
    """The reaper takes a slow export back, the next attempt of the same export finishes, then the slow worker
    wakes up: its writes are refused, it wrote (and cleans up) only its own files, and the next attempt's zip
    (same export, same name) stays on offer."""
    job = setup.lora_job
    export_id = _post(client, job, format="adapter").json()["id"]
    slow = claim_export(export_id, "slow")
    assert slow is not None
    with holding(slow):
        slow_spec = load_export(export_id)
    _age(export_id, heartbeat_at=timedelta(minutes=10))
    assert sweep().requeued["export"] == [export_id]
    fast = claim_export(export_id, "fast")
    assert fast is not None and fast.attempt == 2
    with holding(fast):
        fast_spec = load_export(export_id)
        kept = fast_spec.work_dir / fast_spec.artifact_name
        kept.parent.mkdir(parents=True)
        kept.write_bytes(EMPTY_ZIP)
        assert finish_export(export_id, kept)
    assert fast_spec.work_dir != slow_spec.work_dir and kept.is_relative_to(exports_dir(job) / str(export_id))
    with holding(slow):
        assert not record_progress(export_id, {"phase": "zipping", "done": 1, "total": 2, "unit": "bytes"})
        late = slow_spec.work_dir / slow_spec.artifact_name
        late.parent.mkdir(parents=True)
        late.write_bytes(b"PK\x05\x06" + b"\x01" * 18)
        assert not finish_export(export_id, late)
        fail_export(export_id, "too late")
    shutil.rmtree(slow_spec.work_dir)  # what the worker does once it learns it lost the export
    assert kept.read_bytes() == EMPTY_ZIP
    done = client.get(f"/api/exports/{export_id}").json()
    assert (done["status"], done["error"], done["size_bytes"]) == ("done", None, len(EMPTY_ZIP))
    assert client.get(done["url"]).content == EMPTY_ZIP


def test_a_reaped_export_that_finishes_late_leaves_the_retry_alone(client: TestClient, setup: Setup) -> None:
    """The reaper fails a slow export (its attempts spent), the retry finishes, then the slow worker finishes too:
    its zip is not registered, and the retry's zip (same name) stays on offer."""
    job = setup.lora_job
    slow = _post(client, job, format="adapter").json()["id"]
    assert claim_export(slow)
    fail_export(slow, "the worker stopped responding")  # what the reaper writes once the attempts are spent
    retry = _post(client, job, format="adapter").json()["id"]
    assert retry != slow
    kept = _finish(job, retry, "final-adapter-float32.zip")
    late = exports_dir(job) / str(slow) / "final-adapter-float32.zip"
    late.parent.mkdir(parents=True)
    late.write_bytes(b"PK\x05\x06" + b"\x00" * 18)
    assert not finish_export(slow, late)
    assert kept.is_file()
    (artifact,) = [a for a in client.get(f"/api/jobs/{job}/artifacts").json() if a["name"] == kept.name]
    assert client.get(artifact["url"]).status_code == 200
    assert client.get(f"/api/exports/{slow}").json()["status"] == "failed"
    assert client.get(f"/api/exports/{retry}").json()["url"] == artifact["url"]


def test_broker_down_keeps_the_export_queued_until_the_sweep_sends_it(
    client: TestClient, setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    broker = Broker(up=False)
    monkeypatch.setattr(send, "celery_app", lambda: broker)
    res = _post(client, setup.lora_job, format="adapter")
    assert res.status_code == 201, res.text
    export = res.json()
    assert (export["status"], export["error"]) == ("queued", None)  # waiting for the broker, not failed
    (row,) = client.get(f"/api/jobs/{setup.lora_job}/exports").json()["items"]
    assert row == export
    broker.up = True
    assert sweep().resent["export"] == [] and broker.sent == []  # tried just now: not yet
    _age(export["id"], sent_at=timedelta(minutes=5))  # STUDIO_REDELIVER_SECONDS later
    assert sweep().resent["export"] == [] and broker.sent == []  # no analysis worker is live to take it
    register_worker(ANALYSIS_QUEUE)
    assert sweep().resent["export"] == [export["id"]] and broker.sent == [export["id"]]
    assert claim_export(export["id"]) is not None  # the worker finds it waiting
