"""Weight exports on a worker: package a job's final output or one of its checkpoints as a zip, in one of three
forms (the adapter as is, the adapter merged into its base, a full model) and one of three dtypes.

Phases, each reported to the export's row (a few writes a second at most) so the job page draws a bar:
loading (the base and the adapter, or the model), merging (LoRA layer by layer), saving (safetensors in the
chosen dtype, the tokenizer and a model card) and zipping (bytes). Everything is built in the export's own
folder, data_dir/jobs/<job>/exports/<export id>/; the zip becomes one of the job's artifacts only once it is
whole, and a failure removes the folder, so nothing half-written is ever offered for download.
"""

import json
import logging
import shutil
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from celery import shared_task
from peft import PeftConfig, PeftModel
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from backend.config import get_settings
from backend.errors import DomainError
from backend.export.lifecycle import (
    ExportSpec,
    claim_export,
    exports_dir,
    fail_export,
    finish_export,
    load_export,
    record_progress,
    remove_empty,
)
from backend.job.checkpoints import STATE_FILE
from backend.method import registry
from backend.queue import EXPORT_WEIGHTS
from backend.storage import pinned
from backend.work.heartbeat import heartbeat
from backend.work.kinds import EXPORT
from backend.work.lease import LeaseLost
from workers.artifacts import (
    base_reference,
    load_base,
    name_the_base,
    ready_to_serve,
    save_tokenizer,
    write_model_card,
    zip_directory,
)
from workers.claims import take
from workers.context import load_context
from workers.examples import end_of_turn, load_tokenizer, training_template
from workers.gguf_export import modelfile, write_gguf
from workers.recipes.classification import ADAPTER_LOADING, LOADING
from workers.training import release_memory

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# Within a phase, a database write (and a wake-up) at most this often: a smooth bar, a handful of writes a second.
WRITE_EVERY_SECONDS = 0.25
# How often the size of the safetensors being written is read while save_pretrained runs (it has no hook).
SAVE_POLL_SECONDS = 0.25


class Lost(Exception):
    """The export is no longer running (the reaper failed it): stop, and leave the row as it is."""


class Reporter:
    """Progress to the export's row: on each new phase, at the end of one, and at most every WRITE_EVERY_SECONDS
    in between. A thread sends the latest again every heartbeat_seconds, as the worker's sign of life through
    silent stages (from_pretrained of a large base reports nothing for minutes)."""

    def __init__(self, export_id: int) -> None:
        self.export_id = export_id
        self.current: dict[str, Any] = {"phase": "loading", "done": 0, "total": 0, "unit": "files"}
        self.lost = False
        self._lock = threading.Lock()
        self._written_at = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"export-{export_id}", daemon=True)

    def __call__(self, phase: str, done: int, total: int, unit: str) -> None:
        with self._lock:
            new_phase = phase != self.current["phase"]
            self.current = {"phase": phase, "done": int(done), "total": int(total), "unit": unit}
            if new_phase or done >= total or time.monotonic() - self._written_at >= WRITE_EVERY_SECONDS:
                self._write()
        if self.lost:
            raise Lost(f"export {self.export_id} is no longer running")

    def _write(self) -> None:
        self._written_at = time.monotonic()
        if not record_progress(self.export_id, dict(self.current)):
            self.lost = True

    def _beat(self) -> None:
        while not self._stop.wait(get_settings().heartbeat_seconds):
            with self._lock:
                try:
                    self._write()
                except Exception as exc:  # a missed beat is retried; the lease is minutes long
                    log.warning("progress of export %s not recorded: %s", self.export_id, exc)

    def __enter__(self) -> "Reporter":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# --- loading and merging --------------------------------------------------------------------------------------------


def _auto_class(spec: ExportSpec) -> tuple[Any, dict[str, Any]]:
    """The transformers class the weights load with, and what a classifier's base needs to take its head."""
    if not registry.objective(spec.objective).classifier:
        return AutoModelForCausalLM, {}
    if spec.target.kind != "adapter":
        return AutoModelForSequenceClassification, {}  # a full classifier's config holds its labels
    id2label = dict(enumerate(spec.target.labels))
    head = {"num_labels": len(id2label), "id2label": id2label, "label2id": {v: k for k, v in id2label.items()}}
    return AutoModelForSequenceClassification, head


def merge_device(model: torch.nn.Module) -> torch.device:
    """CUDA when the worker has a GPU with room for the fp32 model (the merge is a matrix product per layer),
    else the CPU."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    free, _total = torch.cuda.mem_get_info()
    needed = sum(p.numel() * p.element_size() for p in model.parameters())
    return torch.device("cuda") if needed * 1.25 < free else torch.device("cpu")


def load_merged(spec: ExportSpec, report: Reporter) -> PreTrainedModel:
    """The base with the adapter folded in. Loaded and merged in fp32 whatever the export's dtype: W + s·B·A in
    fp16 would round much of a small update away; the cast comes after."""
    auto, head = _auto_class(spec)
    assert spec.target.base_path is not None, "an adapter loads on its base"
    config = PeftConfig.from_pretrained(str(spec.target.path))
    if config.is_prompt_learning:
        # The API refuses this (backend/export/service.py check_format); a row queued by other means still must
        # not ship the bare base as a "merged" model: virtual tokens or prefixes have no weights to fold in.
        raise ValueError(f"a {config.peft_type} adapter cannot be merged into its base; export it as adapter")
    report("loading", 0, 2, "files")
    base = load_base(spec.target.base_path, auto_class=auto, trust_remote_code=spec.target.trust_remote_code, **head)
    base.to(merge_device(base))
    report("loading", 1, 2, "files")
    model = PeftModel.from_pretrained(base, spec.target.path)
    report("loading", 2, 2, "files")
    layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
    # merge_and_unload has no progress hook: merge layer by layer here, then let it unload, skipping the merged
    # layers, and swap in a classifier's trained head and untie embeddings as it always does.
    for i, layer in enumerate(layers, 1):
        layer.merge()
        report("merging", i, len(layers), "layers")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*already merged.*")
        merged: PreTrainedModel = model.merge_and_unload()
    return merged


def load_model(spec: ExportSpec, report: Reporter) -> PreTrainedModel:
    """A full model (the final one or a checkpoint), read straight into the export's dtype: only a cast."""
    auto, _ = _auto_class(spec)
    report("loading", 0, 1, "files")
    model: PreTrainedModel = auto.from_pretrained(
        spec.target.path,
        dtype=DTYPES.get(spec.dtype, torch.float32),  # a GGUF export converts from fp32
        use_safetensors=True,  # never unpickle weights
        local_files_only=True,
        trust_remote_code=spec.target.trust_remote_code,
    )
    report("loading", 1, 1, "files")
    return model


# --- saving ---------------------------------------------------------------------------------------------------------


def _written(directory: Path) -> int:
    return sum(f.stat().st_size for f in directory.glob("*.safetensors") if f.is_file())


@contextmanager
def watch_bytes(directory: Path, total: int, report: Reporter) -> Iterator[None]:
    """Report the safetensors bytes in `directory` as a save writes them (polled from a thread)."""
    stop = threading.Event()

    def poll() -> None:
        while not stop.wait(SAVE_POLL_SECONDS):
            try:
                report("saving", min(_written(directory), total - 1), total, "bytes")
            except Exception:  # Lost, or a file replaced under us: the main thread finds out at its next report
                return

    thread = threading.Thread(target=poll, name="export-save", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def save_model(model: PreTrainedModel, dtype: torch.dtype, directory: Path, report: Reporter) -> None:
    # PreTrainedModel.to is decorated @wraps(nn.Module.to), which mypy types as unbound (`self` expected as the first
    # argument); called through the nn.Module type it is still the model's own .to.
    module: nn.Module = model
    module.to(dtype)
    # Tied tensors (embeddings and head) are stored once.
    unique = {t.data_ptr(): t.numel() * t.element_size() for t in model.state_dict().values()}
    total = max(1, sum(unique.values()))
    report("saving", 0, total, "bytes")
    with watch_bytes(directory, total, report):
        model.save_pretrained(directory)  # safetensors
    report("saving", total, total, "bytes")


def save_adapter(spec: ExportSpec, directory: Path, report: Reporter) -> None:
    """The adapter as is, its floating-point tensors cast: no base needs loading."""
    dtype = DTYPES[spec.dtype]
    files = sorted(spec.target.path.glob("adapter_model*.safetensors"))
    loaded = []
    for i, file in enumerate(files, 1):
        with safe_open(str(file), framework="pt") as f:
            metadata = f.metadata()
        loaded.append((file.name, load_file(file), metadata))
        report("loading", i, len(files), "files")
    total = max(1, sum(t.numel() * dtype.itemsize for _, tensors, _ in loaded for t in tensors.values()))
    done = 0
    for name, tensors, metadata in loaded:
        cast = {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}
        save_file(cast, directory / name, metadata=metadata)
        done += sum(t.numel() * t.element_size() for t in cast.values())
        report("saving", min(done, total), total, "bytes")
    shutil.copy2(spec.target.path / "adapter_config.json", directory / "adapter_config.json")
    # A checkpoint's config still names the server folder the base was loaded from.
    name_the_base(directory, base_reference(spec.job_id))


def _losses(spec: ExportSpec) -> tuple[float | None, float | None]:
    """(train loss, eval loss): the job's final ones, or the last logged before the checkpoint was saved."""
    if spec.checkpoint is None:
        return spec.final_loss, spec.final_eval_loss
    try:
        history = json.loads((spec.target.path / STATE_FILE).read_text()).get("log_history", [])
    except (OSError, ValueError):
        return None, None
    last = {key: next((e[key] for e in reversed(history) if key in e), None) for key in ("loss", "eval_loss")}
    return last["loss"], last["eval_loss"]


GGUF_LOADING = """# Ollama, in the unzipped folder: ollama create my-model -f Modelfile && ollama run my-model
# llama.cpp: llama-cli -m {gguf_file}
from transformers import AutoModelForCausalLM, AutoTokenizer

model = AutoModelForCausalLM.from_pretrained(".", gguf_file="{gguf_file}")
tokenizer = AutoTokenizer.from_pretrained(".", gguf_file="{gguf_file}")
"""


def write_card(spec: ExportSpec, directory: Path) -> None:
    """The job's model card (how it was trained, how to load it), and what this export is."""
    labels = dict(enumerate(spec.target.labels))
    loading = None
    if registry.objective(spec.objective).classifier:
        loading = ADAPTER_LOADING.format(labels=labels) if spec.format == "adapter" else LOADING
    if spec.format == "gguf":
        gguf_file = next(directory.glob("*.gguf")).name
        loading = GGUF_LOADING.format(gguf_file=gguf_file)
    loss, eval_loss = _losses(spec)
    write_model_card(
        directory,
        load_context(spec.job_id),
        what=spec.format,
        final_loss=loss,
        final_eval_loss=eval_loss,
        details={"labels": labels} if labels else None,
        loading=loading,
    )
    with (directory / "README.md").open("a", encoding="utf-8") as card:
        card.write(
            f"\n## Export\n\nExported from the {spec.source} of job {spec.job_id} as `{spec.format}`, "
            f"weights in `{spec.dtype}` (export {spec.export_id}). The losses above are "
            f"{'at that checkpoint' if spec.checkpoint else 'the final ones'}.\n"
        )


def save_gguf(spec: ExportSpec, tokenizer: PreTrainedTokenizerBase, directory: Path, report: Reporter) -> None:
    """The model (an adapter merged into its base first) as one GGUF file of type `spec.dtype`, and an Ollama
    Modelfile beside it. A chat model's template is the one training rendered conversations with."""
    model = load_merged(spec, report) if spec.target.kind == "adapter" else load_model(spec, report)
    template = training_template(tokenizer) if tokenizer.chat_template or spec.target.sft else None
    if template is not None and not isinstance(template, str):
        template = None  # a dict of named templates: llama.cpp takes one string
    name = f"job{spec.job_id}-{spec.checkpoint or 'final'}-{spec.dtype}.gguf"
    if template is not None:
        tokenizer.chat_template = template  # end_of_turn reads the marker off this template
    stops = [end_of_turn(tokenizer) if template else "", tokenizer.eos_token or ""]
    write_gguf(
        model,
        tokenizer,
        directory / name,
        spec.dtype,
        name=name.removesuffix(".gguf"),
        chat_template=template,
        report=report,
    )
    context = int(model.config.max_position_embeddings)
    del model
    release_memory()
    (directory / "Modelfile").write_text(modelfile(tokenizer, name, template, stops, context), encoding="utf-8")


def build(spec: ExportSpec, report: Reporter) -> Path:
    """Write the export's directory in its work folder and zip it; the zip's path."""
    shutil.rmtree(spec.work_dir, ignore_errors=True)  # this attempt starts from an empty folder
    staging = spec.work_dir / "staging"
    staging.mkdir(parents=True)
    tokenizer = load_tokenizer(spec.target.tokenizer_path)
    if spec.format == "adapter":
        save_adapter(spec, staging, report)
    elif spec.format == "gguf":
        save_gguf(spec, tokenizer, staging, report)
    else:
        model = load_merged(spec, report) if spec.format == "merged" else load_model(spec, report)
        ready_to_serve(model, tokenizer)
        save_model(model, DTYPES[spec.dtype], staging, report)
        del model
        release_memory()
    if spec.format != "gguf":  # a GGUF file holds its tokenizer
        save_tokenizer(tokenizer, staging)  # with the chat template training used (tool fallback)
    write_card(spec, staging)  # last: PEFT's and transformers' saves may write a README of their own
    archive = zip_directory(
        staging,
        spec.work_dir / spec.artifact_name,
        progress=lambda done, total: report("zipping", done, total, "bytes"),
    )
    shutil.rmtree(staging)
    return archive


def publish(spec: ExportSpec, archive: Path) -> None:
    """Mark the export done with its zip among the job's artifacts (one transaction), unless it was reaped."""
    if not finish_export(spec.export_id, archive):
        raise Lost(f"export {spec.export_id} was failed while it finished")
    # With remote storage the zip left for the bucket: its folders, now empty, go too (kept where they hold it).
    remove_empty(spec.work_dir, exports_dir(spec.job_id))


def _message(exc: Exception) -> str:
    return exc.message if isinstance(exc, DomainError) else f"{type(exc).__name__}: {exc}"


@shared_task(name=EXPORT_WEIGHTS)
def export_weights(export_id: int) -> str:
    """Run export `export_id`; return "done", "failed" or "skipped" (another delivery has it)."""
    won = take(EXPORT, export_id, claim_export)
    if won is None:
        return "skipped"
    spec: ExportSpec | None = None
    try:
        with heartbeat(won), pinned():  # the weights it reads stay in the cache until it is done
            spec = load_export(export_id)
            with Reporter(export_id) as report:
                publish(spec, build(spec, report))
    except Exception as exc:
        if spec is not None:  # this attempt's folder only: a later attempt may own the export by now
            shutil.rmtree(spec.work_dir, ignore_errors=True)
            remove_empty(spec.work_dir.parent, exports_dir(spec.job_id))
        if isinstance(exc, Lost | LeaseLost):
            log.warning("%s", exc)
        else:
            log.exception("export %s failed", export_id)
            with heartbeat(won):
                fail_export(export_id, _message(exc))
        return "failed"
    finally:
        release_memory()
    return "done"
