"""The live streams beside the jobs list, on both backends: a dataset analysis (its progress, then its result),
the models list (a snapshot, then each model that appears, changes or goes) and the workers (live, silent,
and the queue depth). The app runs under a real uvicorn server (tests.api.test_jobs_stream.LiveApp); the
analysis and the worker registry run their worker code in this process against the same database (and Redis
in server mode), so every wake-up comes from the code a worker runs."""

import io
import json
import random
import threading
import zipfile
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update

from backend.config import get_settings
from backend.db import User, Worker, session_scope
from backend.worker.service import alias
from tests.api.test_jobs_stream import LiveApp, _events, _submit, _token
from workers.analysis.tasks import analyze_dataset

Events = Iterator[tuple[str, dict[str, Any]]]
RECORDS = 2000  # about a second of hashing on a fast machine: a few progress writes, a quarter second apart


@pytest.fixture
def live(app_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[LiveApp]:
    """The API under uvicorn. Embedded mode reads the database ten times a second, so a short analysis shows
    a few of its progress writes (a quarter second apart) on a fast machine too."""
    monkeypatch.setenv("STUDIO_POLL_SECONDS", "0.1")
    get_settings.cache_clear()
    with LiveApp() as app:
        yield app


def _next(events: Events, name: str, **want: object) -> dict[str, Any]:
    """The first `name` event whose data matches `want` (earlier events are skipped)."""
    for event, data in events:
        if event == name and all(data.get(k) == v for k, v in want.items()):
            return data
    raise AssertionError(f"the stream ended before a {name} event with {want}")


def _upload_texts(client: httpx.Client, count: int) -> dict[str, Any]:
    rng = random.Random(0)
    words = [f"w{i}" for i in range(500)]
    lines = "".join(json.dumps({"text": " ".join(rng.choices(words, k=60))}) + "\n" for _ in range(count))
    res = client.post("/api/datasets", files={"file": ("texts.jsonl", io.BytesIO(lines.encode()))})
    assert res.status_code == 201, res.text
    return dict(res.json())


def test_an_analysis_streams_its_progress_then_its_result(live: LiveApp) -> None:
    alice, bob = live.client(_token("alice@example.com")), live.client(_token("bob@example.com"))
    dataset = _upload_texts(alice, RECORDS)
    queued = alice.post(f"/api/datasets/{dataset['id']}/hygiene").json()
    assert queued["status"] == "queued" and queued["progress"] is None
    url = f"/api/datasets/analyses/{queued['id']}/stream"
    # Another user's analysis is not found, whoever asks: the stream says nothing about it.
    assert bob.get(url).status_code == 404
    assert bob.get("/api/datasets/analyses/999999/stream").status_code == 404

    seen: list[dict[str, Any]] = []
    with alice.stream("GET", url, timeout=httpx.Timeout(10, read=120)) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = _events(response)
        assert _next(events, "analysis")["status"] == "queued"  # the snapshot
        worker = threading.Thread(target=analyze_dataset, args=(queued["id"],))
        worker.start()
        for event, data in events:
            if event == "end":
                assert data == {"status": "done"}
                break
            seen.append(data)
        worker.join()

    progress = [s["progress"] for s in seen if s["status"] == "running" and s["progress"]]
    hashing = [p for p in progress if p["phase"] == "hashing"]
    assert hashing, seen  # the bar moved while the worker hashed the records
    assert all(p["total"] == RECORDS for p in hashing)
    done = [p["done"] for p in hashing]
    assert done == sorted(done) and done[-1] < RECORDS
    last = seen[-1]
    assert last["status"] == "done" and last["result"]["counts"]["records"] == RECORDS
    # A reconnect after the end replays the final state at once, then ends again.
    with alice.stream("GET", url) as response:
        replay = list(_events(response))
    assert [e for e, _ in replay] == ["analysis", "end"] and replay[0][1]["status"] == "done"


def test_a_failed_analysis_ends_its_stream_with_the_error(live: LiveApp) -> None:
    alice = live.client(_token("alice@example.com"))
    dataset = _upload_texts(alice, 3)
    other = _upload_texts(alice, 2)
    analysis = alice.post(f"/api/datasets/{dataset['id']}/hygiene?validation_dataset_id={other['id']}").json()
    alice.delete(f"/api/datasets/{other['id']}").raise_for_status()  # the worker finds no validation set
    assert analyze_dataset(analysis["id"]) == "failed"
    with alice.stream("GET", f"/api/datasets/analyses/{analysis['id']}/stream") as response:
        replay = list(_events(response))
    assert [e for e, _ in replay] == ["analysis", "end"]
    assert replay[0][1]["status"] == "failed" and "does not exist" in replay[0][1]["error"]
    assert replay[1][1] == {"status": "failed"}


def _model_zip(tmp_path: Path, name: str) -> bytes:
    """A Hugging Face directory as the upload checks it: config, a safetensors header, tokenizer files."""
    header = json.dumps({"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}}).encode()
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        zf.writestr(f"{name}/config.json", json.dumps({"model_type": "llama"}))
        zf.writestr(f"{name}/model.safetensors", len(header).to_bytes(8, "little") + header + bytes(16))
        zf.writestr(f"{name}/tokenizer_config.json", "{}")
    return out.getvalue()


def _add_model(client: httpx.Client, tmp_path: Path, name: str) -> dict[str, Any]:
    res = client.post("/api/models", files={"file": (f"{name}.zip", _model_zip(tmp_path, name))}, data={"name": name})
    assert res.status_code == 201, res.text
    return dict(res.json())


def test_the_models_list_streams_a_snapshot_then_each_change(live: LiveApp, tmp_path: Path) -> None:
    alice, bob = live.client(_token("alice@example.com")), live.client(_token("bob@example.com"))
    first = _add_model(alice, tmp_path, "first")
    _add_model(bob, tmp_path, "bobs")
    with alice.stream("GET", "/api/models/stream") as response:
        assert response.status_code == 200
        events = _events(response)
        event, snapshot = next(events)
        assert event == "models"
        assert [(m["id"], m["name"], m["editable"], m["used_by"]) for m in snapshot["items"]] == [
            (first["id"], "first", True, [])
        ]
        _add_model(bob, tmp_path, "bobs-second")  # not Alice's: never in her stream
        added = _add_model(alice, tmp_path, "added-live")
        seen = _next(events, "model")
        assert (seen["id"], seen["name"], seen["status"], seen["architecture"]) == (
            added["id"],
            "added-live",
            "ready",
            "llama",
        )
        alice.patch(f"/api/models/{added['id']}", json={"name": "renamed"}).raise_for_status()
        assert _next(events, "model", id=added["id"])["name"] == "renamed"
        # A model registered outside the API (as `studio models add` and a finished pretrain job do).
        from backend.model.service import register_model

        directory = tmp_path / "local"
        with zipfile.ZipFile(io.BytesIO(_model_zip(tmp_path, "local"))) as zf:
            zf.extractall(tmp_path)
        with session_scope() as s:
            owner = s.scalars(select(User).where(User.email == "alice@example.com")).one()
            local = register_model(s, owner_id=owner.id, path=directory, name="from-cli").id
        assert _next(events, "model", id=local)["source"] == "local"
        alice.delete(f"/api/models/{first['id']}").raise_for_status()
        assert _next(events, "removed") == {"id": first["id"]}
    # A reconnect gets the list as it is now.
    with alice.stream("GET", "/api/models/stream") as response:
        event, snapshot = next(_events(response))
    assert [m["name"] for m in snapshot["items"]] == ["from-cli", "renamed"]


def test_the_workers_stream_shows_live_and_silent_workers_and_the_queue(live: LiveApp) -> None:
    from workers import registry

    alice = live.client(_token("alice@example.com"))
    name = f"worker-{live.port}@test"
    with alice.stream("GET", "/api/workers/stream") as response:
        assert response.status_code == 200
        events = _events(response)
        empty = _next(events, "workers")
        assert (empty["items"], empty["queued"]) == ([], 0)
        registry.register(name, "studio")  # what a worker does when it starts
        state = _next(events, "workers")
        assert [(w["name"], w["live"], w["queue"]) for w in state["items"]] == [(alias(name, "studio"), True, "studio")]
        assert state["now"]
        # A worker that stopped beating long ago publishes nothing: the stream notices by time.
        with session_scope() as s:
            row = s.get(Worker, name)
            assert row is not None
            s.execute(update(Worker).values(last_seen_at=row.last_seen_at - timedelta(hours=1)))
        assert [w["live"] for w in _next(events, "workers")["items"]] == [False]
        # A queued job changes the depth.
        _submit(alice, "waiting")
        assert _next(events, "workers")["queued"] == 1
        registry.remove(name)  # a clean exit
        assert _next(events, "workers")["items"] == []


def test_the_streams_need_a_login(live: LiveApp) -> None:
    with httpx.Client(base_url=f"http://127.0.0.1:{live.port}", timeout=10) as anonymous:
        for url in ("/api/models/stream", "/api/workers/stream", "/api/datasets/analyses/1/stream"):
            assert anonymous.get(url).status_code == 401, url
