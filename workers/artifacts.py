"""A finished job's outputs: the model card, the downloadable zip, and registration as a base model."""

import json
import os
import shutil
import zipfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

from backend.db import Job, Model, session_scope
from backend.job.checkpoints import MARKER
from backend.job.lifecycle import add_artifact, log_event
from backend.model.service import register_model
from backend.storage import get_storage, is_local
from workers.context import JobContext
from workers.examples import training_template
from workers.ranks import is_main

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
    metrics: dict[str, float] | None = None,
    loading: str | None = None,
) -> None:
    """README.md describing how the weights in `directory` were made and how to load them.

    `metrics` are further final results (eval accuracy, reward margins), `loading` replaces the load snippet."""
    kind = "adapter" if what == "adapter" else "model"
    if ctx.kind == "pretrain":
        origin = f"Pretrained from random weights (architecture preset `{ctx.architecture}`)."
    else:
        method = ctx.method_spec
        trained = f"{method.label} {'adapter' if method.adapter else 'fine-tune'} ({method.trains})"
        origin = (
            f"{trained} of base model **{ctx.base_model_name}** (`{ctx.base_model_path}`), objective `{ctx.objective}`."
        )
        if what == "merged":
            origin += " The adapter is merged into the base weights: this is a plain model, no peft needed."
    lines = [
        f"# {ctx.name}",
        "",
        origin,
        "",
        f"- Dataset: **{ctx.dataset.name}** (`{ctx.dataset.filename}`, sha256 `{ctx.dataset.sha256}`)",
        *([f"- Validation dataset: **{v.name}** (sha256 `{v.sha256}`)"] if (v := ctx.validation_dataset) else []),
        f"- Final train loss: {_loss(final_loss)}",
        f"- Final eval loss: {_loss(final_eval_loss)}",
        *(f"- Final {name.removeprefix('eval_')}: {_loss(value)}" for name, value in (metrics or {}).items()),
        f"- Made by Fine-Tuning Studio, job {ctx.job_id}",
        "",
        "## Hyperparameters",
        "",
        "```json",
        json.dumps(
            {
                **ctx.hp.model_dump(),
                "method_config": ctx.method_config.model_dump(),
                "objective_config": ctx.objective_config.model_dump(),
                **(details or {}),
            },
            indent=2,
            default=str,
        ),
        "```",
        "",
        "## Loading",
        "",
        "```python",
        (loading or LOAD_SNIPPETS[kind]).rstrip("\n"),
        "```",
        "",
    ]
    (directory / "README.md").write_text("\n".join(lines), encoding="utf-8")


ZIP_CHUNK = 1 << 20


def zip_directory(directory: Path, destination: Path, progress: Callable[[int, int], None] | None = None) -> Path:
    """Zip the files of `directory` at the archive root; readers never see a half-written zip. `progress` hears
    (bytes read, bytes in all) as the files go in, a megabyte at a time."""
    tmp = destination.with_name(destination.name + ".tmp")
    files = sorted(p for p in directory.rglob("*") if p.is_file())
    total, done = sum(f.stat().st_size for f in files), 0
    try:
        with zipfile.ZipFile(tmp, "w", allowZip64=True) as zf:
            for file in files:
                info = zipfile.ZipInfo.from_file(file, file.relative_to(directory).as_posix())
                # Weights are dense floats that deflate barely shrinks, at minutes per GB: store them as they are.
                info.compress_type = zipfile.ZIP_STORED if file.suffix == ".safetensors" else zipfile.ZIP_DEFLATED
                # What ZipFile.write does, in chunks the caller hears about.
                with file.open("rb") as src, zf.open(info, "w") as dst:
                    while chunk := src.read(ZIP_CHUNK):
                        dst.write(chunk)
                        done += len(chunk)
                        if progress is not None:
                            progress(done, total)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, destination)  # atomic on one filesystem
    return destination


def publish_directory(ctx: JobContext, directory: Path, zip_name: str) -> None:
    """Zip `directory` next to it in the job folder, store the zip (whole: it is complete) and register it as the
    job's artifact. With remote storage the local zip goes once it is registered (the bucket has it)."""
    archive = zip_directory(directory, ctx.output_dir / zip_name)
    key = f"jobs/{ctx.job_id}/{zip_name}"
    get_storage().put_file(key, archive)
    add_artifact(ctx.job_id, archive, key)
    if not is_local():
        archive.unlink(missing_ok=True)


def store_final(ctx: JobContext, directory: Path) -> None:
    """Store the job's final adapter/ or model/ folder under jobs/<id>/<name>, with a COMPLETE marker stored
    after every other file: a reader of the bucket (the playground, exports, /v1 models) that lists the folder
    while it is being stored finds no marker and does not take the part for the whole."""
    (directory / MARKER).write_text(json.dumps({"time": datetime.now(UTC).isoformat()}))
    get_storage().put_tree(f"jobs/{ctx.job_id}/{directory.name}", directory, last=(MARKER,))


def register_base_model(ctx: JobContext, directory: Path) -> int | None:
    """Add the saved model directory to the owner's base-model list, so it can be fine-tuned next."""
    if not is_main():
        return None  # data parallel: rank 0 saved the directory and registers it
    key = f"jobs/{ctx.job_id}/{directory.name}"  # stored by `export` before this is called
    with session_scope() as s:
        model = register_model(
            s, owner_id=ctx.owner_id, path=directory, name=ctx.name, source="job", job_id=ctx.job_id, key=key
        )
        model_id = model.id
    log_event(ctx.job_id, f"registered as base model #{model_id}")
    return model_id


def base_reference(job_id: int) -> str | None:
    """How an adapter of job `job_id` names its base model off this server: the Hub id it was imported from,
    else its name in the studio (None for a job without a base)."""
    with session_scope() as s:
        job = s.get(Job, job_id)
        base = s.get(Model, job.base_model_id) if job is not None and job.base_model_id is not None else None
        if base is None:
            return None
        return str((base.details or {}).get("hub_id") or base.name)


def name_the_base(directory: Path, base: str | None) -> None:
    """Make adapter_config.json's base_model_name_or_path `base`. PEFT writes the folder the base was loaded
    from: a path on this server, which means nothing where the zip is unpacked and says where our data lives.
    Loading is unaffected: the adapter is always loaded onto a base model object passed in explicitly."""
    path = directory / "adapter_config.json"
    config = json.loads(path.read_text())
    config["base_model_name_or_path"] = base
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def save_tokenizer(tokenizer: PreTrainedTokenizerBase, directory: Path) -> None:
    """Save `tokenizer` with the chat template training rendered conversations with: a base template that
    ignores tools goes out behind the tool fallback (`workers.examples.training_template`), so tools and tool
    calls are laid out at inference as they were in training. A tokenizer without a template stays without."""
    if tokenizer.chat_template:
        tokenizer.chat_template = training_template(tokenizer)
    tokenizer.save_pretrained(directory)


def export(
    ctx: JobContext,
    model: PreTrainedModel | PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    *,
    what: str,
    final_loss: float | None,
    final_eval_loss: float | None,
    details: dict[str, Any] | None = None,
    metrics: dict[str, float] | None = None,
    loading: str | None = None,
) -> Path:
    """Save weights (safetensors), tokenizer and card to job dir/`what`, then publish `what`.zip.

    `what` is "model" (a full model directory) or "adapter" (a PEFT adapter: adapter_config.json and
    adapter_model.safetensors, loaded on top of its base model).
    """
    directory = ctx.output_dir / what
    if not is_main():
        return directory  # data parallel: every rank holds the same weights; rank 0 alone writes them
    # The Trainer turns the KV cache off for training; whoever loads the weights next wants it for generation.
    model.config.use_cache = True
    model.save_pretrained(str(directory))
    if what == "adapter":
        name_the_base(directory, base_reference(ctx.job_id))
    save_tokenizer(tokenizer, directory)
    # Written last: PEFT's save_pretrained writes a README.md template of its own.
    write_model_card(
        directory,
        ctx,
        what=what,
        final_loss=final_loss,
        final_eval_loss=final_eval_loss,
        details=details,
        metrics=metrics,
        loading=loading,
    )
    # Zipped for download before the marker is written (the zip holds the weights alone), then stored whole
    # with its marker last (the playground and exports read jobs/<id>/<what>).
    publish_directory(ctx, directory, f"{what}.zip")
    store_final(ctx, directory)
    return directory


def load_base(
    path: Path, *, auto_class: Any = AutoModelForCausalLM, trust_remote_code: bool = False, **kwargs: Any
) -> Any:
    """A base model loaded fresh for merging: fp32 on the CPU, from safetensors only (see `_export_merged`)."""
    return auto_class.from_pretrained(
        path,
        dtype=torch.float32,
        use_safetensors=True,
        local_files_only=True,
        trust_remote_code=trust_remote_code,
        **kwargs,
    )


def ready_to_serve(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    """Settings a merged model needs to generate once loaded: the KV cache on (training turned it off) and the
    tokenizer's pad id (a classifier's head reads the last token that is not padding)."""
    model.config.use_cache = True
    model.config.pad_token_id = tokenizer.pad_token_id
    if getattr(model, "generation_config", None) is not None:  # a classifier has none
        model.generation_config.pad_token_id = tokenizer.pad_token_id


def export_merged(ctx: JobContext, adapter_dir: Path, tokenizer: PreTrainedTokenizerBase, **kwargs: Any) -> Path | None:
    """merged.zip (see `_export_merged`), as an extra: the adapter is already published, so a merge that fails
    (say the fp32 base does not fit in the worker's RAM after GPU training) warns instead of failing the job.
    A method whose adapter cannot fold into the weights (prompt or prefix tuning) says why instead."""
    if not ctx.method_spec.mergeable:
        log_event(ctx.job_id, f"no merged.zip: {ctx.method_spec.merge_note}")
        return None
    try:
        return _export_merged(ctx, adapter_dir, tokenizer, **kwargs)
    except Exception as exc:
        log_event(ctx.job_id, f"merged.zip was not written ({type(exc).__name__}: {exc}); adapter.zip is", "warning")
        shutil.rmtree(ctx.output_dir / "merged", ignore_errors=True)
        return None


def _export_merged(
    ctx: JobContext,
    adapter_dir: Path,
    tokenizer: PreTrainedTokenizerBase,
    *,
    final_loss: float | None,
    final_eval_loss: float | None,
    auto_class: Any = AutoModelForCausalLM,
    details: dict[str, Any] | None = None,
    metrics: dict[str, float] | None = None,
    loading: str | None = None,
    **load_kwargs: Any,
) -> Path:
    """Fold the saved adapter in `adapter_dir` into its base and publish the result as merged.zip: a plain
    model (safetensors, tokenizer, card) that loads with `auto_class` alone and serves without peft.

    The base is loaded fresh, in fp32 and on the CPU, whatever training ran in: merging W + scale·B·A into a
    bf16 or 4-bit (QLoRA) copy would round the update away, and the GPU may still hold the trained model.
    `load_kwargs` go to `from_pretrained` (e.g. num_labels for a classifier), `loading` replaces the card's
    load snippet (which uses AutoModelForCausalLM)."""
    directory = ctx.output_dir / "merged"
    if not is_main():
        return directory  # data parallel: rank 0 alone writes files
    assert ctx.base_model_path is not None, "only a fine-tuned adapter has a base to merge into"
    base = load_base(ctx.base_model_path, auto_class=auto_class, trust_remote_code=ctx.trust_remote_code, **load_kwargs)
    merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    ready_to_serve(merged, tokenizer)
    merged.save_pretrained(str(directory))
    save_tokenizer(tokenizer, directory)
    write_model_card(
        directory,
        ctx,
        what="merged",
        final_loss=final_loss,
        final_eval_loss=final_eval_loss,
        details=details,
        metrics=metrics,
        loading=loading,
    )
    publish_directory(ctx, directory, "merged.zip")
    return directory
