"""Base-model uploads and imports over the API: a zip of a Hugging Face directory is checked and ready at once,
a .gguf and a Hub id become "importing" rows for a worker, refused files name the problem and leave nothing
behind, and only admins may let a model's own code run."""

import io
import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from safetensors.numpy import save as save_safetensors

FIXTURES = Path(__file__).parent.parent / "fixtures"
EMBED, LAYER = (64, 16), (16, 16)
PARAMETERS = 64 * 16 + 16 * 16
GGUF_HEAD = b"GGUF" + (3).to_bytes(4, "little")


def model_files(**replace: bytes | None) -> dict[str, bytes]:
    """The files of a (tiny) Hugging Face model directory; `replace` swaps or (None) removes some."""
    weights = {"model.embed_tokens.weight": np.zeros(EMBED, np.float32), "lm_head.weight": np.ones(LAYER, np.float32)}
    files: dict[str, bytes | None] = {
        "config.json": json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}).encode(),
        "model.safetensors": save_safetensors(weights),
        "tokenizer.json": json.dumps({"version": "1.0", "model": {"type": "BPE", "vocab": {}, "merges": []}}).encode(),
        "tokenizer_config.json": b'{"eos_token": "</s>"}',
        **replace,
    }
    return {name: data for name, data in files.items() if data is not None}


def zipped(files: dict[str, bytes], folder: str = "") -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(f"{folder}{name}", data)
    return buf.getvalue()


def _stored(app_env: dict[str, str]) -> list[Path]:
    """Every file the studio keeps for models, and anything left in its scratch folders."""
    data = Path(app_env["STUDIO_DATA_DIR"])
    return [p for sub in ("models", "imports", "tmp", "uploads") for p in (data / sub).rglob("*") if p.is_file()]


def _admin(client: TestClient) -> dict[str, str]:
    from backend.auth.service import create_user, issue_token
    from backend.db import session_scope

    with session_scope() as s:
        admin = create_user(s, email="root@example.com", password="password123", is_admin=True)
        return {"Authorization": f"Bearer {issue_token(s, user=admin, kind='api')}"}


def _upload(client: TestClient, filename: str, content: bytes, **form: str) -> Any:
    return client.post("/api/models", files={"file": (filename, io.BytesIO(content))}, data=form)


def test_zip_of_a_model_directory_is_ready_at_once(client: TestClient, app_env: dict[str, str]) -> None:
    res = _upload(client, "my-model.zip", zipped(model_files(), folder="my-model/"))  # zipped as a folder
    assert res.status_code == 201, res.text
    model = res.json()
    assert (model["name"], model["source"], model["status"], model["architecture"]) == (
        "my-model",
        "upload",
        "ready",
        "llama",
    )
    assert model["parameters"] == PARAMETERS and model["trust_remote_code"] is False
    assert client.get("/api/models").json()["items"] == [model]
    assert client.get(f"/api/models/{model['id']}").json() == model
    directory = Path(app_env["STUDIO_DATA_DIR"]) / "models" / str(model["id"])
    assert sorted(p.name for p in directory.iterdir()) == sorted(model_files())
    assert sorted(p.relative_to(directory).as_posix() for p in _stored(app_env)) == sorted(model_files())


def _member(name: str, mode: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.external_attr = mode << 16
    return info


def _with_entry(info: zipfile.ZipInfo | str, data: bytes = b"x") -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, content in model_files().items():
            zf.writestr(name, content)
        zf.writestr(info, data)
    return buf.getvalue()


def _corrupt_deflate() -> bytes:
    """A zip whose headers are intact but whose first member's compressed bytes are garbage."""
    data = bytearray(zipped(model_files(**{"notes.txt": b"abc" * 5000})))
    name_len, extra_len = int.from_bytes(data[26:28], "little"), int.from_bytes(data[28:30], "little")
    start = 30 + name_len + extra_len
    data[start : start + 16] = b"\xff" * 16
    return bytes(data)


def _header_with(shape: object) -> bytes:
    header = json.dumps({"w": {"dtype": "F32", "shape": shape, "data_offsets": [0, 0]}}).encode()
    return len(header).to_bytes(8, "little") + header


@pytest.mark.parametrize(
    ("content", "status", "named"),
    [
        (_corrupt_deflate(), 422, "zip"),
        (zipped(model_files(**{"config.json/inner.txt": b"x"})), 422, "config.json"),
        (zipped(model_files(**{"model.safetensors": _header_with(["x"])})), 422, "shape"),
        (zipped(model_files(**{"model.safetensors": _header_with(-1)})), 422, "shape"),
        (zipped(model_files(**{"model.safetensors": None})), 422, "safetensors"),
        (zipped(model_files(**{"config.json": None})), 422, "config.json"),
        (zipped(model_files(**{"tokenizer.json": None, "tokenizer_config.json": None})), 422, "tokenizer"),
        (zipped(model_files(**{"pytorch_model.bin": b"pickle"})), 422, "pytorch_model.bin"),
        (zipped(model_files(**{"extra/optimizer.pt": b"pickle"})), 422, "extra/optimizer.pt"),
        (zipped(model_files(**{"model.safetensors": b"\x08\x00\x00\x00\x00\x00\x00\x00{not json"})), 422, "model"),
        (_with_entry("../escape.txt"), 422, "../escape.txt"),
        (_with_entry("/etc/cron.d/evil"), 422, "/etc/cron.d/evil"),
        (_with_entry(_member("link", 0o120777), b"/etc/passwd"), 422, "link"),
        (b"PK\x03\x04 this is not really a zip", 422, "zip"),
        (zipped(model_files(**{"big.safetensors": bytes(8 * 1024 * 1024)})), 413, "zip bomb"),
    ],
    ids=[
        "corrupt-deflate",
        "file-and-folder",
        "shape-not-ints",
        "shape-not-a-list",
        "no-safetensors",
        "no-config",
        "no-tokenizer",
        "pickle-bin",
        "pickle-pt-in-subfolder",
        "corrupt-safetensors",
        "zip-slip",
        "absolute-path",
        "symlink",
        "not-a-zip",
        "zip-bomb",
    ],
)
def test_refused_zips_name_the_problem_and_leave_nothing(
    client: TestClient, app_env: dict[str, str], content: bytes, status: int, named: str
) -> None:
    res = _upload(client, "model.zip", content)
    assert res.status_code == status, res.text
    assert named in res.json()["detail"], res.json()
    assert client.get("/api/models").json()["items"] == []
    assert _stored(app_env) == []


@pytest.mark.parametrize("filename", ["pytorch_model.bin", "weights.txt", "model.safetensors", "noextension"])
def test_other_files_are_415(client: TestClient, app_env: dict[str, str], filename: str) -> None:
    res = _upload(client, filename, b"data")
    assert res.status_code == 415, res.text
    assert ".zip" in res.json()["detail"] and ".gguf" in res.json()["detail"]
    assert _stored(app_env) == []


def test_upload_limit(client: TestClient, app_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    from backend.config import get_settings

    monkeypatch.setenv("STUDIO_MAX_MODEL_UPLOAD_BYTES", "2048")
    get_settings.cache_clear()
    res = _upload(client, "m.gguf", GGUF_HEAD + bytes(4096))
    assert res.status_code == 413, res.text
    assert client.post("/api/models/uploads", json={"filename": "m.gguf", "size": 4096}).status_code == 413
    assert _stored(app_env) == []


def test_gguf_is_stored_for_a_worker_and_cannot_be_trained_yet(client: TestClient, app_env: dict[str, str]) -> None:
    res = _upload(client, "SmolLM2.Q4_1.gguf", GGUF_HEAD + bytes(100), name="smol")
    assert res.status_code == 201, res.text
    model = res.json()
    assert (model["name"], model["source"], model["status"], model["parameters"]) == ("smol", "gguf", "importing", 0)
    stored = Path(app_env["STUDIO_DATA_DIR"]) / "imports" / str(model["id"]) / "SmolLM2.Q4_1.gguf"
    assert stored.read_bytes() == GGUF_HEAD + bytes(100)

    text = client.post("/api/datasets", files={"file": ("tiny.txt", (FIXTURES / "tiny.txt").read_bytes())}).json()
    job = {"kind": "finetune", "dataset_id": text["id"], "base_model": model["id"], "objective": "causal_lm"}
    res = client.post("/api/jobs", json=job)
    assert res.status_code == 422, res.text
    assert "base_model" in res.text and "importing" in res.text


def test_a_gguf_must_be_one(client: TestClient, app_env: dict[str, str]) -> None:
    res = _upload(client, "model.gguf", b"GGML" + bytes(100))
    assert res.status_code == 422 and "not a GGUF file" in res.json()["detail"], res.text
    res = _upload(client, "model.gguf", b"GGUF" + (99).to_bytes(4, "little"))
    assert res.status_code == 422 and "version 99" in res.json()["detail"], res.text
    assert _stored(app_env) == []


def test_chunked_upload_of_a_zip(client: TestClient, app_env: dict[str, str]) -> None:
    content = zipped(model_files())
    res = client.post("/api/models/uploads", json={"filename": "chunked.zip", "size": len(content), "name": "ck"})
    assert res.status_code == 201, res.text
    upload_id = res.json()["id"]
    # Completing early is a 409 with the resume point; the upload stays.
    half = len(content) // 2
    headers = {"Content-Range": f"bytes 0-{half - 1}/{len(content)}"}
    assert client.put(f"/api/uploads/{upload_id}", content=content[:half], headers=headers).status_code == 200
    res = client.post("/api/models", data={"upload_id": upload_id})
    assert res.status_code == 409 and res.json()["received_bytes"] == half, res.text
    headers = {"Content-Range": f"bytes {half}-{len(content) - 1}/{len(content)}"}
    assert client.put(f"/api/uploads/{upload_id}", content=content[half:], headers=headers).status_code == 200

    res = client.post("/api/models", data={"upload_id": upload_id})
    assert res.status_code == 201, res.text
    assert (res.json()["name"], res.json()["status"]) == ("ck", "ready")
    assert client.get(f"/api/uploads/{upload_id}").status_code == 404  # consumed
    assert client.post("/api/models", data={"upload_id": upload_id}).status_code == 404


def test_upload_request_shape(client: TestClient) -> None:
    dataset_upload = client.post("/api/uploads", json={"filename": "a.txt", "size": 3}).json()
    res = client.post("/api/models", data={"upload_id": dataset_upload["id"]})
    assert res.status_code == 422 and "dataset upload" in res.json()["detail"], res.text
    assert client.post("/api/models", data={"name": "nothing"}).status_code == 422
    res = client.post("/api/models", files={"file": ("m.gguf", GGUF_HEAD)}, data={"upload_id": "0" * 32})
    assert res.status_code == 422
    assert client.post("/api/models", data={"upload_id": "../../etc"}).status_code == 422
    assert client.post("/api/models/uploads", json={"filename": "m.bin", "size": 3}).status_code == 415


@pytest.mark.parametrize(
    "body",
    [
        {"hub_id": "no-slash", "revision": "main"},
        {"hub_id": "a/b/c", "revision": "main"},
        {"hub_id": "../etc", "revision": "main"},
        {"hub_id": "org/na me", "revision": "main"},
        {"hub_id": "org/name", "revision": ""},
        {"hub_id": "org/name", "revision": "../../x"},
        {"hub_id": "org/name", "revision": "has space"},
        {"hub_id": "org/name"},
        {"hub_id": "org/name", "revision": "main", "trust_remote_code": True},
    ],
)
def test_malformed_hub_imports_are_422(client: TestClient, body: dict[str, Any]) -> None:
    res = client.post("/api/models/import", json=body)
    assert res.status_code == 422, res.text
    assert client.get("/api/models").json()["items"] == []


def test_hub_import_is_queued_pinned(client: TestClient) -> None:
    sha = "a" * 40
    res = client.post("/api/models/import", json={"hub_id": "HuggingFaceTB/SmolLM2-135M", "revision": sha})
    assert res.status_code == 201, res.text
    model = res.json()
    assert (model["name"], model["source"], model["status"]) == ("HuggingFaceTB/SmolLM2-135M", "hub", "importing")
    assert (model["hub_id"], model["revision"], model["commit"]) == ("HuggingFaceTB/SmolLM2-135M", sha, None)


def test_an_import_whose_worker_went_away_is_queued_again_then_failed(
    client: TestClient, app_env: dict[str, str]
) -> None:
    from datetime import timedelta

    from backend.db import Model, session_scope, utcnow
    from backend.model.imports import claim_import, fail_import, load_import, record_progress
    from backend.work.lease import LeaseLost, holding
    from backend.work.reaper import sweep

    def silence(model_id: int) -> None:  # its worker went silent: the last heartbeat is older than the lease
        with session_scope() as s:
            row = s.get(Model, model_id)
            assert row is not None
            row.heartbeat_at = utcnow() - timedelta(minutes=10)

    model_id = _upload(client, "smol.gguf", GGUF_HEAD + bytes(100)).json()["id"]
    stored = Path(app_env["STUDIO_DATA_DIR"]) / "imports" / str(model_id) / "smol.gguf"
    lost = claim_import(model_id, "w1")
    assert lost is not None and lost.attempt == 1
    assert claim_import(model_id, "w2") is None  # a second delivery finds it claimed
    with holding(lost):
        assert load_import(model_id) is not None
        record_progress(model_id, "converting", step=1, steps=2)
    silence(model_id)
    swept = sweep()
    assert (swept.requeued["import"], swept.ended["import"]) == ([model_id], [])
    with session_scope() as s:
        row = s.get(Model, model_id)
        assert row is not None
        assert (row.status, row.lease_worker, row.error) == ("importing", None, None)
        assert "progress" not in (row.details or {})  # the next attempt starts over
    assert stored.is_file()  # the uploaded GGUF waits for the next attempt
    # The lost worker comes back: it no longer owns the import, and cannot end it.
    with holding(lost):
        assert load_import(model_id) is None
        with pytest.raises(LeaseLost):
            record_progress(model_id, "converting", step=2, steps=2)
        fail_import(model_id, "too late")
    assert client.get(f"/api/models/{model_id}").json()["status"] == "importing"

    # Each worker lost on it costs an attempt: the fourth (STUDIO_MAX_ATTEMPTS) is the last.
    for attempt in (2, 3, 4):
        won = claim_import(model_id, f"w{attempt}")
        assert won is not None and won.attempt == attempt
        silence(model_id)
        swept = sweep()
        expected = ([model_id], []) if attempt < 4 else ([], [model_id])
        assert (swept.requeued["import"], swept.ended["import"]) == expected
    failed = client.get(f"/api/models/{model_id}").json()
    assert failed["status"] == "failed"
    assert failed["error"] == "the worker (w4) stopped answering while importing, on attempt 4 of 4"
    assert not stored.exists()


def test_only_admins_may_trust_remote_code(client: TestClient) -> None:
    model = _upload(client, "m.zip", zipped(model_files())).json()
    res = client.patch(f"/api/models/{model['id']}", json={"trust_remote_code": True})
    assert res.status_code == 403 and "admin" in res.json()["detail"], res.text
    assert client.get(f"/api/models/{model['id']}").json()["trust_remote_code"] is False
    # The owner may rename it, though.
    res = client.patch(f"/api/models/{model['id']}", json={"name": "renamed"})
    assert res.status_code == 200 and res.json()["name"] == "renamed"

    admin = _admin(client)
    res = client.patch(f"/api/models/{model['id']}", json={"trust_remote_code": True}, headers=admin)
    assert res.status_code == 200 and res.json()["trust_remote_code"] is True
    assert client.get(f"/api/models/{model['id']}").json()["trust_remote_code"] is True

    from backend.db import Model, session_scope

    with session_scope() as s:
        row = s.get(Model, model["id"])
        assert row is not None and row.details["trust_remote_code"] is True  # what the worker's context reads


def test_delete_keeps_models_that_jobs_use(client: TestClient, app_env: dict[str, str]) -> None:
    kept = _upload(client, "kept.zip", zipped(model_files())).json()
    gone = _upload(client, "gone.gguf", GGUF_HEAD).json()
    text = client.post("/api/datasets", files={"file": ("tiny.txt", (FIXTURES / "tiny.txt").read_bytes())}).json()
    job = {"kind": "finetune", "dataset_id": text["id"], "base_model": kept["id"], "objective": "causal_lm"}
    assert client.post("/api/jobs", json=job).status_code == 201

    res = client.delete(f"/api/models/{kept['id']}")
    assert res.status_code == 409 and "job" in res.json()["detail"], res.text
    assert client.delete(f"/api/models/{gone['id']}").status_code == 204
    assert [m["id"] for m in client.get("/api/models").json()["items"]] == [kept["id"]]
    assert all(str(gone["id"]) not in p.parts for p in _stored(app_env))


def test_model_detail_lists_files_config_and_the_jobs_that_used_it(client: TestClient) -> None:
    config = {
        "model_type": "llama",
        "num_hidden_layers": 2,
        "hidden_size": 16,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 64,
        "max_position_embeddings": 128,
        "dtype": "float32",
    }
    tok_config = json.dumps({"eos_token": "</s>", "chat_template": "{{ messages }}"}).encode()
    files = model_files(**{"config.json": json.dumps(config).encode(), "tokenizer_config.json": tok_config})
    model = _upload(client, "detailed.zip", zipped(files)).json()
    text = client.post("/api/datasets", files={"file": ("tiny.txt", (FIXTURES / "tiny.txt").read_bytes())}).json()
    job = {"kind": "finetune", "dataset_id": text["id"], "base_model": model["id"], "objective": "causal_lm"}
    job_id = client.post("/api/jobs", json={**job, "name": "uses-it"}).json()["id"]

    detail = client.get(f"/api/models/{model['id']}/detail").json()
    assert {k: detail[k] for k in model} == model  # the list's view, and more
    assert detail["files"] == [{"name": n, "size_bytes": len(files[n])} for n in sorted(files)]
    assert detail["size_bytes"] == sum(len(b) for b in files.values())
    assert detail["config"] == {
        "layers": 2,
        "hidden_size": 16,
        "attention_heads": 4,
        "kv_heads": 2,
        "vocab_size": 64,
        "context_length": 128,
        "dtype": "float32",
        "chat_template": True,
    }
    assert detail["progress"] is None
    assert [(j["id"], j["name"], j["kind"]) for j in detail["jobs"]] == [(job_id, "uses-it", "finetune")]
    # The HTML page shows the same, with the buttons that start from it.
    page = client.get(f"/models/{model['id']}").text
    assert "model.safetensors" in page and f"/jobs/new?kind=finetune&amp;base_model={model['id']}" in page
    assert f'href="/jobs/{job_id}"' in page and f'href="/models/{model["id"]}"' in client.get("/models").text


def test_an_importing_model_has_no_files_yet_and_others_cannot_see_it(client: TestClient) -> None:
    model = _upload(client, "pending.gguf", GGUF_HEAD).json()
    detail = client.get(f"/api/models/{model['id']}/detail").json()
    assert (detail["status"], detail["files"], detail["config"], detail["jobs"]) == ("importing", [], None, [])
    assert "Import" in client.get(f"/models/{model['id']}").text
    assert client.get("/api/models/99999/detail").status_code == 404
    assert client.get("/models/99999").status_code == 404
    admin = _admin(client)
    from backend.auth.service import create_user, issue_token
    from backend.db import session_scope

    with session_scope() as s:
        stranger = create_user(s, email="stranger@example.com", password="password123")
        headers = {"Authorization": f"Bearer {issue_token(s, user=stranger, kind='api')}"}
    assert client.get(f"/api/models/{model['id']}/detail", headers=headers).status_code == 404
    assert client.get(f"/api/models/{model['id']}/detail", headers=admin).status_code == 200  # an admin sees all
