"""What a GGUF export can convert, decided from the files on disk before a worker loads anything: the model's
architecture and its tokenizer. The web app asks at POST (a 422 naming why); the worker writes the file from the
same tables (workers/gguf_export.py). JSON only: no torch, no `gguf` package here.
"""

import json
from pathlib import Path
from typing import Any, Literal

GgufType = Literal["f16", "bf16", "q8_0", "q4_0"]
GGUF_TYPES: tuple[str, ...] = ("f16", "bf16", "q8_0", "q4_0")
# transformers class → llama.cpp's architecture name (convert_hf_to_gguf.py LlamaModel). The studio's presets and
# pretrains are LlamaForCausalLM; other families need their own tensor map and are refused rather than guessed.
ARCHITECTURES = {"LlamaForCausalLM": "llama"}

# llama.cpp picks its pre-tokenizer (how text is split before BPE) by name; a vocabulary whose merges were learned
# on another split would tokenize differently there, so only splits that can be named are converted.
_GPT2_REGEX = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_LLAMA3_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_SPLITS = {_GPT2_REGEX: "gpt-2", _LLAMA3_REGEX: "llama-bpe"}


class NotConvertible(ValueError):
    """Why these weights cannot become a GGUF file (said to the user as the 422's message)."""


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise NotConvertible(f"{path.name} cannot be read: {exc}") from None
    if not isinstance(data, dict):
        raise NotConvertible(f"{path.name} is not a JSON object")
    return data


def architecture(config: dict[str, Any]) -> str:
    """llama.cpp's name for the model's architecture."""
    names = config.get("architectures") or []
    for name in names:
        if name in ARCHITECTURES:
            return ARCHITECTURES[name]
    shown = ", ".join(names) or "none named in config.json"
    raise NotConvertible(
        f"architecture {shown} has no GGUF mapping here (supported: {', '.join(sorted(ARCHITECTURES))})"
    )


def rope_scaling(config: dict[str, Any]) -> dict[str, Any]:
    """The rope scaling to write ({} for none): transformers 5 keeps it in rope_parameters, older configs in
    rope_scaling. Llama 3's and YaRN's need extra tensors or keys, and are refused rather than approximated."""
    params = dict(config.get("rope_parameters") or config.get("rope_scaling") or {})
    kind = params.get("rope_type") or params.get("type") or "default"
    if kind not in ("default", "linear"):
        raise NotConvertible(f"rope scaling {kind!r} is not converted (only none or linear)")
    return params if kind == "linear" else {}


def _split_names(pre: dict[str, Any] | None) -> list[str]:
    """The pre-tokenizer's llama.cpp name candidates, from its regex splits (a Sequence is searched). Any step
    llama.cpp would not take ("Digits", "Whitespace", "Metaspace", a Split on another regex, ...) is "unknown":
    it changes where the text is cut, so the same text would become other tokens there."""
    if not pre:
        return []
    kind = pre.get("type")
    if kind == "Sequence":
        steps = pre.get("pretokenizers", [])
        if _is_smollm(steps):
            return ["smollm"]
        return [n for p in steps for n in _split_names(p)]
    if kind == "ByteLevel":
        # ByteLevel's own regex is GPT-2's; without it, it only maps bytes to characters (after a Split).
        return ["gpt-2"] if pre.get("use_regex", True) else []
    if kind == "Split":
        pattern = (pre.get("pattern") or {}).get("Regex")
        return [_SPLITS[pattern]] if pattern in _SPLITS else ["unknown"]
    return ["unknown"]


def _is_smollm(steps: list[dict[str, Any]]) -> bool:
    """SmolLM's and StarCoder's split: every digit on its own, then GPT-2's regex (llama.cpp's "smollm", whose
    first regex is a lone \\p{N})."""
    return (
        len(steps) == 2
        and steps[0].get("type") == "Digits"
        and bool(steps[0].get("individual_digits"))
        and steps[1].get("type") == "ByteLevel"
        and steps[1].get("use_regex", True)
    )


def _normalizes(normalizer: dict[str, Any] | None) -> bool:
    """Whether a tokenizer.json normalizer changes text before it is split (llama.cpp applies none)."""
    if not normalizer:
        return False
    if normalizer.get("type") == "Sequence":
        return any(_normalizes(n) for n in normalizer.get("normalizers", []))
    return True


def pre_tokenizer(tokenizer: dict[str, Any]) -> str:
    """llama.cpp's pre-tokenizer name for a byte-level BPE tokenizer.json, or NotConvertible."""
    model = tokenizer.get("model") or {}
    if model.get("type") != "BPE" or model.get("byte_fallback"):
        # SentencePiece-style vocabularies (byte fallback, Llama 2's) would need llama.cpp's "llama" model with
        # per-token scores; not written here.
        raise NotConvertible(
            f"tokenizer model {model.get('type')!r}{' with byte fallback' if model.get('byte_fallback') else ''} "
            "is not converted: only byte-level BPE tokenizers (the studio's own) are"
        )
    normalizer = tokenizer.get("normalizer")
    if _normalizes(normalizer):
        raise NotConvertible(
            f"the tokenizer normalizes text first ({(normalizer or {}).get('type')}), which llama.cpp does not: "
            "its tokens would differ there"
        )
    names = _split_names(tokenizer.get("pre_tokenizer"))
    if len(names) != 1 or names[0] == "unknown":
        raise NotConvertible("the tokenizer's pre-tokenizer split matches none llama.cpp names (gpt-2, llama-bpe)")
    return names[0]


def check_convertible(model_dir: Path, tokenizer_dir: Path) -> tuple[str, str]:
    """(architecture, pre-tokenizer) for the model at `model_dir` (a full model, or an adapter's base) and the
    tokenizer at `tokenizer_dir`; NotConvertible says why not."""
    config = read_json(model_dir / "config.json")
    arch = architecture(config)
    rope_scaling(config)
    if not (tokenizer_dir / "tokenizer.json").is_file():
        raise NotConvertible("the tokenizer has no tokenizer.json (a fast tokenizer) to take the vocabulary from")
    return arch, pre_tokenizer(read_json(tokenizer_dir / "tokenizer.json"))
