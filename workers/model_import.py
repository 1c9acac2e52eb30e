"""Model imports on a worker: de-quantize a GGUF into a safetensors directory, or download a Hub snapshot.

The task builds the directory in a staging folder and hands it to `backend.model.imports.finish_import`, which
moves it into data_dir/models/<id>/ and marks the model ready. The GGUF converter also runs as a command,
`python -m workers.model_import gguf SRC DEST`, for `studio models import-demo` (the CLI never imports torch).
"""

import argparse
import fnmatch
import logging
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from celery import shared_task
from huggingface_hub import HfApi, constants, snapshot_download
from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError
from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

from backend.config import get_settings
from backend.model.imports import ImportSpec, claim_import, fail_import, finish_import, load_import, record_progress
from backend.queue import IMPORT_MODEL
from backend.storage import scratch_dir
from backend.work.heartbeat import heartbeat
from backend.work.kinds import IMPORT
from workers.claims import take

log = logging.getLogger(__name__)

# What a Hub import downloads, at the top level of the repository only: weights as safetensors, configs,
# tokenizers (json, sentencepiece .model, BPE vocab/merges .txt), chat templates, and the model's own code
# (inert unless an admin turns trust_remote_code on). Never *.bin / *.pt: unpickling can run code.
HUB_PATTERNS = ("*.safetensors", "*.json", "*.model", "*.txt", "*.jinja", "*.py")


class ImportFailed(Exception):
    """An import that cannot succeed, with the message the user sees."""


# Stage reporter: (stage, step, steps, done, total, unit). The task records to the model row; the CLI ignores it.
Progress = Callable[..., None]


def _quiet(*_args: object, **_kwargs: object) -> None:
    pass


def gguf_tensor_count(gguf: Path) -> int:
    """How many tensors the GGUF holds (its header only: the reader memory-maps, reading no weights)."""
    from gguf import GGUFReader  # the converter's own dependency; only its header is read here

    return len(GGUFReader(gguf).tensors)


def convert_gguf(gguf: Path, dest: Path, progress: Progress = _quiet) -> None:
    """De-quantize `gguf` (weights, tokenizer, chat template) into a Hugging Face directory at `dest`."""
    progress("reading the tokenizer", step=1, steps=3)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True)
    # transformers de-quantizes inside from_pretrained, with no per-tensor hook: the count tells what is done.
    progress("de-quantizing the weights", step=2, steps=3, done=0, total=gguf_tensor_count(gguf), unit="tensors")
    # GGUF blocks store small integers with a per-block fp16 scale (and offset); their products need more
    # mantissa than bf16's 8 bits, so the unpacked weights are kept in fp32: exact, at 4 bytes a weight.
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent,
        gguf_file=gguf.name,
        # dequantize=True: plain dense tensors and no quantizer left attached, so the model saves as safetensors.
        quantization_config=GgufConfig(dequantize=True),
        dtype=torch.float32,
        local_files_only=True,
    )
    progress("writing safetensors", step=3, steps=3)
    dest.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)


def _network_error(exc: BaseException) -> bool:
    """A failure to reach the Hub at all (DNS, refused, timeout, offline mode), whatever the HTTP library."""
    if isinstance(exc, OSError):
        return True
    names = {cls.__name__ for cls in type(exc).__mro__}
    return bool(names & {"TransportError", "TimeoutException", "OfflineModeIsEnabled", "ConnectionError"})


def hub_files(siblings: list[str]) -> list[str]:
    """The repository's files a hub import downloads (top level, HUB_PATTERNS)."""
    return sorted(f for f in siblings if "/" not in f and any(fnmatch.fnmatch(f, p) for p in HUB_PATTERNS))


def check_room(what: str, size: int, dest: Path) -> None:
    """Refuse, before downloading anything, a model over the base-model size limit or bigger than the disk's
    free space (a half-downloaded model would fill the disk for every job)."""
    limit = get_settings().max_model_upload_bytes
    if size > limit:
        raise ImportFailed(
            f"{what} is {_mib(size)}, over the {_mib(limit)} limit for base models (STUDIO_MAX_MODEL_UPLOAD_BYTES)"
        )
    folder = next(p for p in (dest, *dest.parents) if p.exists())
    free = shutil.disk_usage(folder).free
    if size > free:
        raise ImportFailed(f"{what} needs {_mib(size)} but the worker's disk has {_mib(free)} free")


def _mib(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB"


def download_hub(hub_id: str, revision: str, dest: Path, progress: Progress = _quiet) -> dict[str, Any]:
    """Download `hub_id` at `revision` into `dest`; return what was pinned. Fails within the Hub timeout
    when there is no network, instead of retrying for minutes."""
    settings = get_settings()
    host = urlparse(settings.hub_endpoint).hostname or settings.hub_endpoint
    offline = f"no network: cannot reach {host} to download {hub_id}@{revision}"
    if constants.HF_HUB_OFFLINE:
        raise ImportFailed(f"{offline} (HF_HUB_OFFLINE is set on the worker)")
    api = HfApi(endpoint=settings.hub_endpoint)
    progress("resolving the revision", step=1, steps=2)
    try:
        # One small request first: it checks the network, the repository and the revision, resolves the
        # revision to a commit (what we then download, so the files all come from one commit), and lists files.
        info = api.model_info(hub_id, revision=revision, timeout=settings.hub_timeout_seconds, files_metadata=True)
    except GatedRepoError:
        raise ImportFailed(f"{hub_id} is gated: accept its terms on the Hub and set HF_TOKEN on the workers") from None
    except RevisionNotFoundError:
        raise ImportFailed(f"{hub_id} has no revision {revision!r}") from None
    except RepositoryNotFoundError:
        raise ImportFailed(f"{hub_id} is not on the Hub (or it is private: set HF_TOKEN on the workers)") from None
    except Exception as exc:
        if _network_error(exc):
            raise ImportFailed(f"{offline} ({type(exc).__name__}: {exc})") from None
        raise
    files = hub_files([s.rfilename for s in info.siblings or []])
    if not any(f.endswith(".safetensors") for f in files):
        raise ImportFailed(
            f"{hub_id}@{revision} has no *.safetensors weights at its top level; only safetensors are loaded "
            "(pickled .bin checkpoints are never downloaded)"
        )
    check_room(f"{hub_id}@{revision}", sum(s.size or 0 for s in info.siblings or [] if s.rfilename in files), dest)
    progress("downloading", step=2, steps=2, done=0, total=len(files), unit="files")
    try:
        snapshot_download(
            hub_id,
            revision=info.sha,
            local_dir=dest,
            allow_patterns=files,
            endpoint=settings.hub_endpoint,
            etag_timeout=settings.hub_timeout_seconds,
        )
        progress("downloading", step=2, steps=2, done=len(files), total=len(files), unit="files")
    except Exception as exc:
        if _network_error(exc):
            raise ImportFailed(f"the download of {hub_id}@{revision} broke off: {type(exc).__name__}: {exc}") from None
        raise
    shutil.rmtree(dest / ".cache", ignore_errors=True)  # huggingface_hub's bookkeeping, not the model's
    return {"commit": info.sha, "files": files}


def run_import(spec: ImportSpec, staged: Path) -> dict[str, Any]:
    """Fill `staged` for the import `spec` describes; return details to store with the model."""

    def progress(stage: str, **where: Any) -> None:
        record_progress(spec.model_id, stage, **where)

    if spec.source == "gguf":
        if spec.gguf_path is None or not spec.gguf_path.is_file():
            raise ImportFailed(f"the uploaded GGUF file of model {spec.model_id} is gone")
        convert_gguf(spec.gguf_path, staged, progress)
        return {"dtype": "float32"}
    if spec.source == "hub":
        if not spec.hub_id or not spec.revision:
            raise ImportFailed(f"model {spec.model_id} names no hub id and revision")
        return download_hub(spec.hub_id, spec.revision, staged, progress)
    raise ImportFailed(f"model {spec.model_id} has source {spec.source!r}, which no worker imports")


@shared_task(name=IMPORT_MODEL)
def import_model(model_id: int) -> str:
    """Import model `model_id`; return "ready", "failed" or "skipped" (deleted, finished, or another delivery has
    it)."""
    won = take(IMPORT, model_id, claim_import)
    if won is None:
        return "skipped"
    with heartbeat(won):
        return _import(model_id)


def _import(model_id: int) -> str:
    spec = load_import(model_id)
    if spec is None:
        return "skipped"
    staged = scratch_dir() / f"import-{model_id}-{uuid.uuid4().hex[:8]}"
    try:
        details = run_import(spec, staged)
    except Exception as exc:
        shutil.rmtree(staged, ignore_errors=True)  # a partial download or conversion
        if not isinstance(exc, ImportFailed):
            log.exception("import of model %s failed", model_id)
        fail_import(model_id, str(exc) if isinstance(exc, ImportFailed) else f"{type(exc).__name__}: {exc}")
        return "failed"
    try:
        finished = finish_import(model_id, staged, details)
    except Exception as exc:  # the converted files failed the checks an upload gets: say why, don't hang
        shutil.rmtree(staged, ignore_errors=True)
        log.exception("model %s failed its checks after import", model_id)
        fail_import(model_id, str(exc))
        return "failed"
    return "ready" if finished else "skipped"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m workers.model_import")
    sub = parser.add_subparsers(dest="command", required=True)
    gguf = sub.add_parser("gguf", help="de-quantize a GGUF file into a Hugging Face safetensors directory")
    gguf.add_argument("src", type=Path)
    gguf.add_argument("dest", type=Path)
    args = parser.parse_args(argv)
    convert_gguf(args.src.resolve(), args.dest)
    print(f"wrote {args.dest}")


if __name__ == "__main__":
    main()
