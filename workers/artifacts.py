"""A finished job's outputs: the model card, the downloadable zip, and registration as a base model."""

import json
import os
import zipfile
from pathlib import Path
from typing import Any

from peft import PeftModel
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from backend.db import session_scope
from backend.job.lifecycle import add_artifact, log_event
from backend.model.service import register_model
from workers.context import JobContext

LOAD_SNIPPETS = {
    "model": (
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
        'model = AutoModelForCausalLM.from_pretrained("path/to/unzipped")\n'
        'tokenizer = AutoTokenizer.from_pretrained("path/to/unzipped")\n'
    ),
    "adapter": (
        "from peft import PeftModel\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
        'base = AutoModelForCausalLM.from_pretrained("path/to/base")\n'
        'model = PeftModel.from_pretrained(base, "path/to/unzipped")\n'
        'tokenizer = AutoTokenizer.from_pretrained("path/to/unzipped")\n'
    ),
}


def _loss(value: float | None) -> str:
    return f"{value:.4f}" if value is not None else "n/a"


def write_model_card(
    directory: Path,
    ctx: JobContext,
    *,
    what: str,
    final_loss: float | None,
    final_eval_loss: float | None,
    details: dict[str, Any] | None = None,
) -> None:
    """README.md describing how the weights in `directory` were made and how to load them."""
    kind = "adapter" if what == "adapter" else "model"
    if ctx.kind == "pretrain":
        origin = f"Pretrained from random weights (architecture preset `{ctx.architecture}`)."
    else:
        method = "LoRA adapter" if ctx.method == "lora" else "Full fine-tune"
        origin = (
            f"{method} of base model **{ctx.base_model_name}** (`{ctx.base_model_path}`), objective `{ctx.objective}`."
        )
    lines = [
        f"# {ctx.name}",
        "",
        origin,
        "",
        f"- Dataset: **{ctx.dataset.name}** (`{ctx.dataset.filename}`, sha256 `{ctx.dataset.sha256}`)",
        *([f"- Validation dataset: **{v.name}** (sha256 `{v.sha256}`)"] if (v := ctx.validation_dataset) else []),
        f"- Final train loss: {_loss(final_loss)}",
        f"- Final eval loss: {_loss(final_eval_loss)}",
        f"- Made by Fine-Tuning Studio, job {ctx.job_id}",
        "",
        "## Hyperparameters",
        "",
        "```json",
        json.dumps({**ctx.hp.model_dump(), **(details or {})}, indent=2, default=str),
        "```",
        "",
        "## Loading",
        "",
        "```python",
        LOAD_SNIPPETS[kind].rstrip("\n"),
        "```",
        "",
    ]
    (directory / "README.md").write_text("\n".join(lines), encoding="utf-8")


def zip_directory(directory: Path, destination: Path) -> Path:
    """Zip the files of `directory` at the archive root; readers never see a half-written zip."""
    tmp = destination.with_name(destination.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", allowZip64=True) as zf:
        for file in sorted(p for p in directory.rglob("*") if p.is_file()):
            # Weights are dense floats that deflate barely shrinks, at minutes per GB: store them as they are.
            method = zipfile.ZIP_STORED if file.suffix == ".safetensors" else zipfile.ZIP_DEFLATED
            zf.write(file, file.relative_to(directory).as_posix(), compress_type=method)
    os.replace(tmp, destination)  # atomic on one filesystem
    return destination


def publish_directory(ctx: JobContext, directory: Path, zip_name: str) -> Path:
    """Zip `directory` next to it in the job folder and register the zip as the job's artifact."""
    archive = zip_directory(directory, ctx.output_dir / zip_name)
    add_artifact(ctx.job_id, archive)
    return archive


def register_base_model(ctx: JobContext, directory: Path) -> int:
    """Add the saved model directory to the owner's base-model list, so it can be fine-tuned next."""
    with session_scope() as s:
        model = register_model(s, owner_id=ctx.owner_id, path=directory, name=ctx.name, source="job", job_id=ctx.job_id)
        model_id = model.id
    log_event(ctx.job_id, f"registered as base model #{model_id}")
    return model_id


def export(
    ctx: JobContext,
    model: PreTrainedModel | PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    *,
    what: str,
    final_loss: float | None,
    final_eval_loss: float | None,
    details: dict[str, Any] | None = None,
) -> Path:
    """Save weights (safetensors), tokenizer and card to job dir/`what`, then publish `what`.zip.

    `what` is "model" (a full model directory) or "adapter" (a PEFT adapter: adapter_config.json and
    adapter_model.safetensors, loaded on top of its base model).
    """
    directory = ctx.output_dir / what
    # The Trainer turns the KV cache off for training; whoever loads the weights next wants it for generation.
    model.config.use_cache = True
    model.save_pretrained(str(directory))
    tokenizer.save_pretrained(directory)
    # Written last: PEFT's save_pretrained writes a README.md template of its own.
    write_model_card(directory, ctx, what=what, final_loss=final_loss, final_eval_loss=final_eval_loss, details=details)
    publish_directory(ctx, directory, f"{what}.zip")
    return directory
