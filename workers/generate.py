"""Playground answers on a worker: load what answers (a base model, a job's adapter on its base or its full
model, or a checkpoint of either), then stream the answer into the generation's row as it is written.

Generation runs in a thread that feeds transformers' TextIteratorStreamer; this thread reads the text pieces
and appends them to the row in batches (every FLUSH_SECONDS), publishing a wake-up after each, so the page's
SSE stream shows words as they come without a database write per token. The last loaded model stays in
memory (keyed by its paths and file times), so the next prompt to the same weights starts at once.
"""

import gc
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from celery import shared_task
from peft import PeftModel
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    PreTrainedConfig,
    PreTrainedTokenizerBase,
    StoppingCriteria,
    StoppingCriteriaList,
    TextIteratorStreamer,
)

from backend.errors import DomainError
from backend.playground.lifecycle import (
    GenerationSpec,
    append_output,
    claim_generation,
    finish_generation,
    load_generation,
    record_usage,
)
from backend.playground.service import Target
from backend.queue import GENERATE
from backend.storage import pinned
from backend.work.heartbeat import heartbeat
from backend.work.kinds import GENERATION
from backend.work.lease import LeaseLost
from workers.claims import take
from workers.examples import end_of_turn, format_conversation, format_prompt, load_tokenizer
from workers.prompt_learning import fix_generation
from workers.recipes.classification import classify
from workers.training import use_bf16

log = logging.getLogger(__name__)

# A write and a publish per ~100 ms: a smooth stream for the reader, a few rows' worth of writes a second.
FLUSH_SECONDS = 0.1
# A generation thread that produces nothing for this long is stuck: stop waiting for it.
STREAM_TIMEOUT_SECONDS = 300.0


@dataclass
class Loaded:
    key: tuple[Any, ...]
    model: nn.Module
    tokenizer: PreTrainedTokenizerBase
    labels: list[str]  # a classifier's class names by id; empty for a language model


_cache: Loaded | None = None


def _stamp(path: Path | None) -> float:
    """The newest modification time among the files of `path`: rewritten weights make a new cache key."""
    if path is None or not path.is_dir():
        return 0.0
    return max((f.stat().st_mtime for f in path.iterdir() if f.is_file()), default=0.0)


def cache_key(target: Target) -> tuple[Any, ...]:
    return (
        target.kind,
        target.task,
        str(target.path),
        _stamp(target.path),
        str(target.base_path),
        _stamp(target.base_path),
        str(target.tokenizer_path),
        tuple(target.labels),
    )


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _load_options(target: Target) -> dict[str, Any]:
    return {
        "use_safetensors": True,  # never unpickle weights: .bin files can run code when loaded
        "local_files_only": True,
        "trust_remote_code": target.trust_remote_code,
        # Inference only: bf16 halves the memory on GPUs that run it natively; fp32 on CPU, where bf16 is slow.
        "dtype": torch.bfloat16 if use_bf16() else torch.float32,
    }


def _load_model(target: Target) -> nn.Module:
    options = _load_options(target)
    if target.task == "classify":
        auto: Any = AutoModelForSequenceClassification
        if target.kind == "adapter":
            # The saved adapter holds the trained head in full, but the base must be built with that head's shape.
            id2label = dict(enumerate(target.labels))
            options |= {
                "num_labels": len(target.labels),
                "id2label": id2label,
                "label2id": {v: k for k, v in id2label.items()},
            }
    else:
        auto = AutoModelForCausalLM
    if target.kind == "adapter":
        assert target.base_path is not None, "an adapter loads on its base"
        base = auto.from_pretrained(target.base_path, **options)
        adapted = PeftModel.from_pretrained(base, target.path)
        fix_generation(adapted)  # prompt and prefix tuning: see workers/prompt_learning.py
        return adapted
    model: nn.Module = auto.from_pretrained(target.path, **options)
    return model


def load(target: Target) -> Loaded:
    """The model and tokenizer `target` names, from the cache when they are the ones loaded last."""
    global _cache
    key = cache_key(target)
    if _cache is not None and _cache.key == key:
        return _cache
    _cache = None  # let the previous model go before the next one loads: two may not fit at once
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    tokenizer = load_tokenizer(target.tokenizer_path)
    model = _load_model(target).to(device())
    model.eval()  # no dropout: greedy answers are the same every time
    labels: list[str] = []
    if target.task == "classify":
        config = model.config  # a PeftModel forwards to its base's config
        assert isinstance(config, PreTrainedConfig)  # typed as nn.Module's attribute: Tensor | Module
        # The head reads the last token that is not padding: the model must know which id pads.
        config.pad_token_id = tokenizer.pad_token_id
        # PreTrainedConfig types id2label `dict[int, str] | dict[str, str] | None` (and num_labels, its length,
        # `int | None`), but __post_init__ always sets it, keyed by int (two labels unless the config says otherwise).
        id2label = cast(dict[int, str], config.id2label)
        labels = target.labels or [str(id2label[i]) for i in range(len(id2label))]
    _cache = Loaded(key=key, model=model, tokenizer=tokenizer, labels=labels)
    return _cache


def stop_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """EOS, and the chat template's end-of-turn marker when it is one token of its own (e.g. <|im_end|>)."""
    ids = [tokenizer.eos_token_id]
    marker = end_of_turn(tokenizer)
    marker_ids = tokenizer(marker, add_special_tokens=False)["input_ids"] if marker else []
    if len(marker_ids) == 1 and marker_ids[0] not in ids:
        ids.append(marker_ids[0])
    return [int(i) for i in ids if i is not None]


def virtual_tokens(model: nn.Module) -> int:
    """Positions a prompt or prefix tuning adapter places before the input: they take up the context too."""
    config = getattr(model, "active_peft_config", None)  # a PeftModel's; None for a plain model
    return int(config.num_virtual_tokens) if config is not None and config.is_prompt_learning else 0


def prompt_inputs(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompt: str,
    *,
    chat: bool,
    max_new_tokens: int,
    tools: list[Any] | None = None,
    messages: list[dict[str, Any]] | None = None,
) -> tuple[dict[str, torch.Tensor], int]:
    """(input tensors, max_new_tokens), cut to fit the model's context. `tools` go to the chat template (or the
    tool fallback training used, see workers/examples.py); `messages` (the /v1 API's conversation) replace the
    single prompt turn."""
    # A chat layout is the one SFT trained on, and its template already carries any BOS (see workers/watch.py).
    if chat and messages:
        text = format_conversation(tokenizer, messages, tools)
    else:
        text = format_prompt(tokenizer, prompt, tools=tools) if chat else prompt
    inputs = dict(tokenizer(text, return_tensors="pt", add_special_tokens=not chat))
    context = getattr(model.config, "max_position_embeddings", None)
    if context:
        context = max(2, context - virtual_tokens(model))
        # Positions past the context were never trained: keep the end of a long prompt (the part the answer
        # follows) and leave room for the answer.
        max_new_tokens = max(1, min(max_new_tokens, context - 1))
        keep = context - max_new_tokens
        inputs = {k: v[:, -keep:] for k, v in inputs.items()}
    return {k: v.to(device()) for k, v in inputs.items()}, max_new_tokens


class StopOnText(StoppingCriteria):
    """Stop once the answer's text holds one of `stops`. Decoded text, not token ids: a stop sequence may be
    split across tokens in any way. (transformers' own `stop_strings` failed on byte-level BPE vocabularies.)"""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, stops: list[str], prompt_length: int) -> None:
        self.tokenizer, self.stops, self.prompt_length = tokenizer, list(stops), prompt_length
        # A stop sequence of n characters lies within its last n + 1 tokens (a token writes at least one
        # character, and the first may start mid-token); the margin covers tokens that write none.
        self.window = max(len(s) for s in self.stops) + 8

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        tails = input_ids[:, self.prompt_length :][:, -self.window :]
        texts = self.tokenizer.batch_decode(tails, skip_special_tokens=True)
        done = [any(stop in text for stop in self.stops) for text in texts]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)  # type: ignore[return-value]


def stream_text(
    loaded: Loaded, prompt: str, params: dict[str, Any], usage: dict[str, int] | None = None
) -> Iterator[str]:
    """The answer to `prompt`, in pieces as the model writes them (whole words: the streamer holds back a
    partial word until it is complete). `usage` receives the prompt's and the answer's token counts."""
    model, tokenizer = loaded.model, loaded.tokenizer
    inputs, max_new_tokens = prompt_inputs(
        model,
        tokenizer,
        prompt,
        chat=bool(params.get("chat")),
        max_new_tokens=int(params["max_new_tokens"]),
        tools=params.get("tools") or None,
        messages=params.get("messages") or None,
    )
    temperature = float(params.get("temperature", 0.0))
    sampling: dict[str, Any] = {"do_sample": False}
    if temperature > 0:
        sampling = {"do_sample": True, "temperature": temperature, "top_p": float(params.get("top_p", 1.0))}
    prompt_length = int(inputs["input_ids"].shape[1])
    if params.get("stop"):
        # Stop sequences (the /v1 API's `stop`): generation ends once one is written; the API cuts it off.
        sampling["stopping_criteria"] = StoppingCriteriaList([StopOnText(tokenizer, params["stop"], prompt_length)])
    streamer = TextIteratorStreamer(
        tokenizer,  # type: ignore[arg-type]
        skip_prompt=True,
        skip_special_tokens=True,
        timeout=STREAM_TIMEOUT_SECONDS,
    )
    failures: list[BaseException] = []

    def run() -> None:
        try:
            with torch.no_grad():
                out = model.generate(  # type: ignore[operator]
                    **inputs,
                    max_new_tokens=max_new_tokens,
                    pad_token_id=tokenizer.pad_token_id,
                    eos_token_id=stop_ids(tokenizer),
                    streamer=streamer,
                    **sampling,
                )
            if usage is not None:
                # max_new_tokens as lowered to fit the context: the /v1 API's finish_reason "length" reads it.
                completion = int(out.shape[1]) - prompt_length
                usage.update(prompt_tokens=prompt_length, completion_tokens=completion, max_new_tokens=max_new_tokens)
        except BaseException as exc:  # handed to the reading thread, which raises it
            failures.append(exc)
            streamer.end()  # generate() ends the stream only when it returns: unblock the reader

    thread = threading.Thread(target=run, name="playground-generate", daemon=True)
    thread.start()
    for piece in streamer:
        if piece:
            yield piece
    thread.join()
    if failures:
        raise failures[0]


def answer(spec: GenerationSpec) -> None:
    """Generate spec's answer into its row: a classifier's label at once, a language model's text in batches."""
    loaded = load(spec.target)
    gid = spec.generation_id
    if spec.target.task == "classify":
        append_output(gid, classify(loaded.model, loaded.tokenizer, spec.prompt, loaded.labels))
        return
    pending: list[str] = []
    flushed_at = time.monotonic()
    usage: dict[str, int] = {}
    for piece in stream_text(loaded, spec.prompt, spec.params, usage):
        pending.append(piece)
        if time.monotonic() - flushed_at >= FLUSH_SECONDS:
            append_output(gid, "".join(pending))
            pending.clear()
            flushed_at = time.monotonic()
    append_output(gid, "".join(pending))
    if usage:
        record_usage(gid, usage)


def _message(exc: Exception) -> str:
    return exc.message if isinstance(exc, DomainError) else f"{type(exc).__name__}: {exc}"


@shared_task(name=GENERATE)
def generate(generation_id: int) -> str:
    """Answer generation `generation_id`; return "done", "failed", "skipped" (another delivery has it) or "lost"
    (the reaper took it from this worker)."""
    won = take(GENERATION, generation_id, claim_generation)
    if won is None:
        return "skipped"
    with heartbeat(won), pinned():  # the weights it loads stay in the cache until the answer is done
        try:
            answer(load_generation(generation_id))
        except LeaseLost as exc:
            log.warning("%s", exc)
            return "lost"
        except Exception as exc:
            log.exception("generation %s failed", generation_id)
            finish_generation(generation_id, error=_message(exc))
            return "failed"
        finish_generation(generation_id)
    return "done"
