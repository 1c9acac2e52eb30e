"""The import task: a real quantized GGUF (the pretrained tiny model written by llama.cpp's layout) is
de-quantized into safetensors that load and generate like the original; a hub import downloads a pinned
snapshot (safetensors, configs and tokenizer only) from a Hub served on localhost, and with no network it
fails within seconds, saying so."""

import socket
import time
from pathlib import Path

import pytest
import torch
from huggingface_hub import constants
from transformers import AutoModelForCausalLM, AutoTokenizer

from backend.config import get_settings
from backend.db import Model, User, session_scope
from backend.model.imports import create_hub_import
from backend.model.service import import_key, safetensors_parameter_count
from backend.model.upload import import_file
from tests.support import stored
from tests.workers.fake_hub import FakeHub, serve
from tests.workers.gguf_writer import write_gguf
from tests.workers.support import Pretrained, Seed
from workers.model_import import hub_files, import_model

PROMPT = "The fox and the crow"


def _upload(seed: Seed, path: Path, filename: str) -> int:
    """Store `path` as the upload API does; the row is "importing"."""
    with session_scope() as s:
        user = s.get(User, seed.user_id)
        assert user is not None
        model = import_file(s, user=user, path=path, filename=filename)
        assert model.status == "importing"
        return model.id


def _row(model_id: int) -> Model:
    with session_scope() as s:
        model = s.get(Model, model_id)
        assert model is not None
        s.expunge(model)
        return model


def test_gguf_is_dequantized_into_a_loadable_model(seed: Seed, pretrained: Pretrained, tmp_path: Path) -> None:
    gguf = write_gguf(pretrained.model_path, tmp_path / "tiny.Q8_0.gguf")
    model_id = _upload(seed, gguf, "tiny-fables.Q8_0.gguf")
    assert (stored(import_key(model_id)) / "tiny-fables.Q8_0.gguf").is_file()

    assert import_model(model_id) == "ready"
    row = _row(model_id)
    assert (row.status, row.error, row.source, row.architecture) == ("ready", None, "gguf", "llama")
    assert row.path == f"models/{model_id}"
    assert row.parameters == safetensors_parameter_count(pretrained.model_path)
    assert not stored(import_key(model_id)).exists()  # the uploaded GGUF is not kept once converted
    assert import_model(model_id) == "skipped"  # a second delivery finds it done

    original = AutoModelForCausalLM.from_pretrained(pretrained.model_path, use_safetensors=True)
    imported = AutoModelForCausalLM.from_pretrained(stored(row.path), use_safetensors=True, local_files_only=True)
    tok, imported_tok = (
        AutoTokenizer.from_pretrained(pretrained.model_path),
        AutoTokenizer.from_pretrained(stored(row.path)),
    )
    ids = tok(PROMPT, return_tensors="pt")["input_ids"]
    assert imported_tok(PROMPT, return_tensors="pt")["input_ids"].tolist() == ids.tolist()
    assert imported_tok.eos_token == tok.eos_token and imported_tok.chat_template  # the GGUF's template came along
    with torch.no_grad():
        want, got = original(ids).logits, imported(ids).logits
    # Q8_0 keeps 8 bits per weight with one fp16 scale per 32: logits move by a few thousandths, not more.
    assert (want - got).abs().max() < 0.05 * want.abs().max()
    greedy = {"max_new_tokens": 8, "min_new_tokens": 8, "do_sample": False, "pad_token_id": tok.pad_token_id}
    out = imported.generate(ids, **greedy)
    assert out.shape[1] == ids.shape[1] + 8
    assert imported_tok.decode(out[0]).startswith(PROMPT)
    assert out.tolist() == original.generate(ids, **greedy).tolist()  # the same continuation as the original


def test_broken_gguf_fails_with_the_error_and_leaves_nothing(seed: Seed, tmp_path: Path) -> None:
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + (3).to_bytes(4, "little") + b"\xff" * 64)  # a valid header start, then garbage
    model_id = _upload(seed, bad, "broken.gguf")

    assert import_model(model_id) == "failed"
    row = _row(model_id)
    assert row.status == "failed" and row.error
    assert not stored(import_key(model_id)).exists()
    assert not list(get_settings().path("tmp").glob(f"import-{model_id}-*"))
    assert not stored(row.path).exists()


def _hub_import(seed: Seed, hub_id: str, revision: str) -> int:
    with session_scope() as s:
        user = s.get(User, seed.user_id)
        assert user is not None
        return create_hub_import(s, user=user, hub_id=hub_id, revision=revision).id


def test_hub_import_downloads_a_pinned_snapshot(
    seed: Seed, pretrained: Pretrained, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = {p.name: p.read_bytes() for p in pretrained.model_path.iterdir() if p.is_file()}
    files |= {"pytorch_model.bin": b"a pickle", "README.md": b"# tiny", "onnx/model.onnx": b"onnx"}
    sha = "0123456789abcdef0123456789abcdef01234567"
    hub = FakeHub("fables/tiny-llama", files, sha=sha, tags=("v1.0",))
    monkeypatch.setenv("STUDIO_HUB_ENDPOINT", hub.url)
    get_settings.cache_clear()
    with serve(hub):
        model_id = _hub_import(seed, "fables/tiny-llama", "v1.0")
        assert import_model(model_id) == "ready"
        missing = _hub_import(seed, "fables/tiny-llama", "v2.0")
        assert import_model(missing) == "failed"
        unknown = _hub_import(seed, "fables/other", "main")
        assert import_model(unknown) == "failed"

    row = _row(model_id)
    assert (row.status, row.source, row.revision, row.architecture) == ("ready", "hub", "v1.0", "llama")
    assert row.details["commit"] == sha  # the tag, resolved: every file comes from that one commit
    assert row.parameters == safetensors_parameter_count(pretrained.model_path)
    wanted = sorted(name for name in files if name.endswith((".json", ".safetensors")))
    assert hub.downloads() == wanted  # never the pickle, the readme or a subfolder
    assert sorted(p.name for p in stored(row.path).iterdir()) == wanted  # huggingface_hub's .cache removed
    model = AutoModelForCausalLM.from_pretrained(stored(row.path), use_safetensors=True, local_files_only=True)
    assert model.config.model_type == "llama"
    assert _row(missing).error == "fables/tiny-llama has no revision 'v2.0'"
    assert _row(unknown).error and _row(unknown).error.startswith("fables/other is not on the Hub")


def test_hub_repo_without_safetensors_is_refused_before_downloading(
    seed: Seed, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub = FakeHub("old/pickled", {"config.json": b"{}", "pytorch_model.bin": b"a pickle", "tokenizer.json": b"{}"})
    monkeypatch.setenv("STUDIO_HUB_ENDPOINT", hub.url)
    get_settings.cache_clear()
    with serve(hub):
        model_id = _hub_import(seed, "old/pickled", "main")
        assert import_model(model_id) == "failed"
    assert hub.downloads() == []
    error = _row(model_id).error
    assert error and "no *.safetensors weights" in error and ".bin" in error


def test_hub_model_over_the_size_limit_is_refused_before_downloading(
    seed: Seed, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = {"config.json": b"{}", "model.safetensors": b"\0" * 4096, "tokenizer.json": b"{}"}
    hub = FakeHub("big/model", files)
    monkeypatch.setenv("STUDIO_HUB_ENDPOINT", hub.url)
    monkeypatch.setenv("STUDIO_MAX_MODEL_UPLOAD_BYTES", "2048")
    get_settings.cache_clear()
    with serve(hub):
        model_id = _hub_import(seed, "big/model", "main")
        assert import_model(model_id) == "failed"
    get_settings.cache_clear()
    assert hub.downloads() == []
    error = _row(model_id).error
    assert error == (
        "big/model@main is 0.0 MiB, over the 0.0 MiB limit for base models (STUDIO_MAX_MODEL_UPLOAD_BYTES)"
    )


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # nothing listens once the socket is closed: connection refused


@pytest.mark.parametrize("how", ["unreachable", "offline mode"])
def test_hub_import_without_network_fails_at_once(seed: Seed, monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    if how == "unreachable":
        monkeypatch.setenv("STUDIO_HUB_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
        get_settings.cache_clear()
        host = "127.0.0.1"
    else:
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
        host = "huggingface.co"
    model_id = _hub_import(seed, "HuggingFaceTB/SmolLM2-135M", "main")

    started = time.monotonic()
    assert import_model(model_id) == "failed"
    assert time.monotonic() - started < 10
    row = _row(model_id)
    assert row.status == "failed"
    assert row.error and row.error.startswith(
        f"no network: cannot reach {host} to download HuggingFaceTB/SmolLM2-135M@main"
    ), row.error


def test_hub_imports_take_safetensors_and_tokenizer_files_only() -> None:
    listed = [
        "config.json",
        "model.safetensors",
        "model.safetensors.index.json",
        "pytorch_model.bin",
        "tokenizer.json",
        "tokenizer.model",
        "merges.txt",
        "chat_template.jinja",
        "README.md",
        "onnx/model.onnx",
        "original/consolidated.safetensors",
        "training_args.bin",
    ]
    assert hub_files(listed) == [
        "chat_template.jinja",
        "config.json",
        "merges.txt",
        "model.safetensors",
        "model.safetensors.index.json",
        "tokenizer.json",
        "tokenizer.model",
    ]


def test_gguf_import_records_its_progress(seed: Seed, pretrained: Pretrained, tmp_path: Path) -> None:
    gguf = write_gguf(pretrained.model_path, tmp_path / "tiny.Q8_0.gguf")
    model_id = _upload(seed, gguf, "progress.Q8_0.gguf")
    assert "progress" not in (_row(model_id).details or {})  # nothing until a worker starts
    assert import_model(model_id) == "ready"
    progress = _row(model_id).details["progress"]
    # Every stage was recorded, in order, with when it began; the last one is where the import ended.
    stages = [h["stage"] for h in progress["history"]]
    assert stages == ["reading the tokenizer", "de-quantizing the weights", "writing safetensors"]
    times = [h["at"] for h in progress["history"]]
    assert times == sorted(times)
    assert (progress["stage"], progress["step"], progress["steps"]) == ("writing safetensors", 3, 3)
