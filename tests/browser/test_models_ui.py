"""Headless Chromium through the models page: upload a zip of a tiny Hugging Face model (progress shown, ready at
once), upload a GGUF that the worker de-quantizes while the page watches it turn ready without a reload, and a
Hub import that fails at once without network, its error shown. Screenshots land in test-output/screenshots/."""

import json
import re
import zipfile
from pathlib import Path
from typing import Any

import pytest

from tests.browser.test_dashboard import FIXTURES, page, shot
from tests.support import StudioProcess
from tests.workers.gguf_writer import write_gguf

pytestmark = pytest.mark.browser
__all__ = ["page"]  # fixture shared with the dashboard test

WATCH_PROGRESS = """() => {
  window.progressSeen = [];
  window.sameDocument = true;  // gone if the page reloads
  const bar = document.getElementById("model-upload-progress");
  new MutationObserver(() => window.progressSeen.push(Number(bar.value)))
    .observe(bar, {attributes: true, attributeFilter: ["value"]});
}"""


def _tiny_model(directory: Path) -> Path:
    """A real (random) Llama with a byte-level BPE tokenizer, saved as a Hugging Face directory."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from workers.data import train_tokenizer

    tok = train_tokenizer([(FIXTURES / "tiny.txt").read_text()], vocab_size=300)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=64,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory


def _zip_dir(directory: Path, out: Path) -> Path:
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for file in sorted(directory.iterdir()):
            zf.write(file, f"{directory.name}/{file.name}")
    return out


def _row(page: Any, name: str) -> Any:
    return page.locator("#model-table tbody tr", has=page.locator(".cell-title", has_text=name))


def test_upload_zip_gguf_and_hub_import(page, studio: StudioProcess, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect

    model_dir = _tiny_model(tmp_path / "tiny-llama")
    archive = _zip_dir(model_dir, tmp_path / "tiny-llama.zip")
    gguf = write_gguf(model_dir, tmp_path / "tiny-llama.Q8_0.gguf")

    page.goto("/login")
    page.fill("#login-email", studio.email)
    page.fill("#login-password", studio.password)
    page.click("#login-submit")
    page.wait_for_url(re.compile(r"/jobs$"))
    page.goto("/models")
    expect(page.locator("#models-empty")).to_be_visible()
    page.evaluate(WATCH_PROGRESS)

    # 1. A file of another kind is refused before anything is sent.
    page.set_input_files("#model-upload-file", str(FIXTURES / "tiny.txt"))
    expect(page.locator("#model-upload-error")).to_contain_text(".gguf")
    expect(page.locator("#model-upload-submit")).to_be_disabled()

    # 2. The zip: sent in chunks with a progress bar, checked, and listed as ready at once.
    page.set_input_files("#model-upload-file", str(archive))
    expect(page.locator("#model-upload-filename")).to_contain_text("tiny-llama.zip")
    page.fill("#model-upload-name", "zipped-llama")
    page.click("#model-upload-submit")
    row = _row(page, "zipped-llama")
    expect(row.locator(".badge")).to_have_text("ready")
    expect(row).to_contain_text("upload")
    expect(row.get_by_role("link", name="Fine-tune")).to_be_visible()
    seen = page.evaluate("() => window.progressSeen")
    assert seen and max(seen) == 100, seen

    # 3. The GGUF: "importing" until the worker has de-quantized it; the page follows without reloading.
    page.set_input_files("#model-upload-file", str(gguf))
    page.click("#model-upload-submit")
    row = _row(page, "tiny-llama.Q8_0")
    expect(row.locator(".badge")).to_have_text(re.compile("importing|ready"))
    shot(page, "models-importing")
    expect(row.locator(".badge")).to_have_text("ready", timeout=120_000)
    expect(row).to_contain_text("llama")
    assert page.evaluate("() => window.sameDocument") is True

    # 4. A Hub import with no network fails at once, and says why.
    page.fill("#hub-id", "HuggingFaceTB/SmolLM2-135M-Instruct")
    page.fill("#hub-revision", "main")
    page.click("#hub-import-submit")
    row = _row(page, "HuggingFaceTB/SmolLM2-135M-Instruct")
    expect(row.locator(".badge")).to_have_text("failed", timeout=60_000)
    expect(row.locator(".model-error")).to_contain_text("no network: cannot reach 127.0.0.1")
    expect(row.get_by_role("link", name="Fine-tune")).to_have_count(0)
    shot(page, "models")

    # 5. The failed import can be removed.
    page.once("dialog", lambda dialog: dialog.accept())
    row.get_by_role("button", name=re.compile("Remove")).click()
    expect(row).to_have_count(0)

    api = studio.client()
    models = {m["name"]: m for m in api.get("/api/models").json()["items"]}
    assert sorted(models) == ["tiny-llama.Q8_0", "zipped-llama"]
    assert {m["status"] for m in models.values()} == {"ready"}
    assert models["tiny-llama.Q8_0"]["parameters"] == models["zipped-llama"]["parameters"]
    assert json.loads((model_dir / "config.json").read_text())["model_type"] == models["zipped-llama"]["architecture"]
