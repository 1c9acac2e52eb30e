"""A loaded causal LM and its tokenizer as one GGUF file (llama.cpp, Ollama, LM Studio), written with the `gguf`
package the way llama.cpp's convert_hf_to_gguf.py writes a LLaMA, plus an Ollama Modelfile.

- Tensors: names from gguf's own tensor map for the architecture; q_proj/k_proj rows reordered as llama.cpp's
  LlamaModel.permute does (its rotary kernel pairs dimension i with i + 1, transformers pairs i with i + d/2);
  no output.weight when the head is tied to the embeddings (llama.cpp then reuses token_embd).
- Types: norms and other vectors stay f32. f16/bf16 store every matrix so. q8_0 and q4_0 quantize each matrix
  whose rows split into 32-value blocks (the others fall back to f16, as the converter does); with q4_0 the
  output matrix (the embeddings when tied) is q8_0, as llama-quantize keeps the head at higher precision.
- Tokenizer: byte-level BPE as `gpt2` with its pre-tokenizer name, every id's token and type (control for
  special added tokens), merges, bos/eos/pad ids, whether BOS/EOS are added, and the chat template.

What can be converted is decided from the files before anything loads (backend/export/gguf.py), so a request the
worker could not serve is refused at POST.
"""

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from backend.export.gguf import NotConvertible, architecture, pre_tokenizer, rope_scaling

Report = Callable[[str, int, int, str], None]

FILE_TYPES = {
    "f16": gguf.LlamaFileType.MOSTLY_F16,
    "bf16": gguf.LlamaFileType.MOSTLY_BF16,
    "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
    "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0,
}
MATRIX_TYPES = {
    "f16": gguf.GGMLQuantizationType.F16,
    "bf16": gguf.GGMLQuantizationType.BF16,
    "q8_0": gguf.GGMLQuantizationType.Q8_0,
    "q4_0": gguf.GGMLQuantizationType.Q4_0,
}
# Ollama's defaults for a chat model the studio trained: a moderate temperature, and a context no longer than the
# model was built for.
TEMPERATURE = 0.7
MAX_NUM_CTX = 4096
_PROBE = "GGUFPROBE7f3c"


def permute(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """convert_hf_to_gguf.py LlamaModel.permute: each head's rows from halves [re..., im...] to pairs."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _config_value(config: Any, *names: str, default: Any = None) -> Any:
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return value
    return default


def _rope(config: Any) -> tuple[float, dict[str, Any]]:
    """(theta, scaling to write)."""
    params = dict(getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {})
    theta = params.get("rope_theta") or getattr(config, "rope_theta", None) or 10000.0
    return float(theta), rope_scaling(config.to_dict())


def add_hyperparameters(writer: gguf.GGUFWriter, model: PreTrainedModel, gguf_type: str) -> None:
    config = model.config
    n_head = config.num_attention_heads
    head_dim = _config_value(config, "head_dim", default=config.hidden_size // n_head)
    theta, scaling = _rope(config)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(_config_value(config, "num_key_value_heads", default=n_head))
    writer.add_rope_freq_base(theta)
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_vocab_size(config.vocab_size)
    writer.add_rope_dimension_count(head_dim)
    if head_dim != config.hidden_size // n_head:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    if scaling:
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(scaling["factor"]))
    writer.add_file_type(FILE_TYPES[gguf_type])


def add_tokenizer(
    writer: gguf.GGUFWriter, tokenizer: PreTrainedTokenizerBase, vocab_size: int, chat_template: str | None
) -> None:
    """The vocabulary as convert_hf_to_gguf.py's get_vocab_base lays out a byte-level BPE."""
    data = json.loads(tokenizer.backend_tokenizer.to_str())  # type: ignore[attr-defined]
    pre = pre_tokenizer(data)
    vocab = tokenizer.get_vocab()
    if max(vocab.values()) >= vocab_size:
        raise NotConvertible(f"the tokenizer has ids beyond the model's {vocab_size} embeddings")
    by_id = {i: t for t, i in vocab.items()}
    added = tokenizer.added_tokens_decoder  # type: ignore[attr-defined]
    tokens: list[str] = []
    types: list[int] = []
    for i in range(vocab_size):
        if i not in by_id:  # embedding rows past the vocabulary (padded to a multiple)
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(added[i].content)
            types.append(gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in data["model"].get("merges", [])]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    for add, token_id in (
        (writer.add_bos_token_id, tokenizer.bos_token_id),
        (writer.add_eos_token_id, tokenizer.eos_token_id),
        (writer.add_pad_token_id, tokenizer.pad_token_id),
    ):
        if token_id is not None:
            add(int(token_id))
    # Whether the tokenizer itself puts BOS/EOS around a text (llama.cpp asks the file, not a config).
    ids = tokenizer("a")["input_ids"]
    writer.add_add_bos_token(bool(ids) and ids[0] == tokenizer.bos_token_id)
    writer.add_add_eos_token(bool(ids) and len(ids) > 1 and ids[-1] == tokenizer.eos_token_id)
    if chat_template:
        writer.add_chat_template(chat_template)


def _tensor_type(gguf_name: str, w: torch.Tensor, gguf_type: str, tied: bool) -> gguf.GGMLQuantizationType:
    if w.ndim < 2:
        return gguf.GGMLQuantizationType.F32
    wanted = MATRIX_TYPES[gguf_type]
    head = gguf_name == "output.weight" or (tied and gguf_name == "token_embd.weight")
    if gguf_type == "q4_0" and head:
        wanted = gguf.GGMLQuantizationType.Q8_0
    block, _ = gguf.GGML_QUANT_SIZES[wanted]
    return wanted if w.shape[-1] % block == 0 else gguf.GGMLQuantizationType.F16


@dataclass(frozen=True)
class Planned:
    """One tensor of the file: where it comes from, its name and type there."""

    hf_name: str
    name: str
    qtype: gguf.GGMLQuantizationType


def _nbytes(shape: tuple[int, ...], qtype: gguf.GGMLQuantizationType) -> int:
    block, type_size = gguf.GGML_QUANT_SIZES[qtype]
    return math.prod(shape) // block * type_size


def plan_tensors(writer: gguf.GGUFWriter, model: PreTrainedModel, gguf_type: str) -> list[Planned]:
    """Declare every tensor (name, shape, type, size) before any is converted: the file's header lists them all,
    and the data is then written one tensor at a time (`write_tensors`), so converting a model never holds a
    second copy of it in memory nor in a temporary file."""
    config = model.config
    tied = bool(getattr(config, "tie_word_embeddings", False))
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    plan = []
    for hf_name, tensor in model.state_dict().items():
        if tied and hf_name == "lm_head.weight":
            continue
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise NotConvertible(f"tensor {hf_name} has no GGUF name for llama")
        qtype = _tensor_type(name, tensor, gguf_type, tied)
        shape = tuple(tensor.shape)
        dtype = np.float16 if qtype == gguf.GGMLQuantizationType.F16 else np.float32
        raw = None if qtype in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16) else qtype
        writer.add_tensor_info(name, shape, np.dtype(dtype), _nbytes(shape, qtype), raw_dtype=raw)
        plan.append(Planned(hf_name, name, qtype))
    return plan


def write_tensors(writer: gguf.GGUFWriter, model: PreTrainedModel, plan: list[Planned], report: Report) -> None:
    """Convert and write each planned tensor, in the header's order."""
    config = model.config
    n_head = config.num_attention_heads
    n_kv = _config_value(config, "num_key_value_heads", default=n_head)
    state = model.state_dict()
    for i, t in enumerate(plan, 1):
        w = state[t.hf_name].detach().to("cpu", torch.float32)
        # Biases too, as llama.cpp's converter does: a model with attention_bias would otherwise rotate wrongly.
        if t.hf_name.endswith(("q_proj.weight", "q_proj.bias")):
            w = permute(w, n_head)
        elif t.hf_name.endswith(("k_proj.weight", "k_proj.bias")):
            w = permute(w, n_kv)
        array = w.numpy()
        if t.qtype == gguf.GGMLQuantizationType.F16:
            array = array.astype(np.float16)
        elif t.qtype != gguf.GGMLQuantizationType.F32:
            array = gguf.quants.quantize(array, t.qtype)
        writer.write_tensor_data(array)
        report("converting", i, len(plan), "tensors")


def write_gguf(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    out: Path,
    gguf_type: str,
    *,
    name: str,
    chat_template: str | None,
    report: Report,
) -> Path:
    """Write `model` (a causal LM, any dtype: each tensor is converted from fp32) as a GGUF file at `out`."""
    # A model built in memory names no architectures in its config yet; its class is the same name.
    names = list(getattr(model.config, "architectures", None) or [type(model).__name__])
    arch = architecture({"architectures": names})
    writer = gguf.GGUFWriter(out, arch)
    try:
        writer.add_name(name)
        add_hyperparameters(writer, model, gguf_type)
        add_tokenizer(writer, tokenizer, model.config.vocab_size, chat_template)
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        plan = plan_tensors(writer, model, gguf_type)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        write_tensors(writer, model, plan, report)
    finally:
        writer.close()  # a long-lived worker must not keep the file open after a failed conversion
    return out


# --- the Ollama Modelfile -------------------------------------------------------------------------------------------


def _render(tokenizer: PreTrainedTokenizerBase, template: str, messages: list[dict[str, str]], gen: bool) -> str:
    text = tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False, add_generation_prompt=gen)
    assert isinstance(text, str)
    return text


def _around(text: str, probe: str) -> tuple[str, str]:
    at = text.index(probe)
    return text[:at], text[at + len(probe) :]


def go_template(tokenizer: PreTrainedTokenizerBase, template: str) -> str:
    """The chat template as an Ollama (Go) template, read off renders of probe conversations: what each role's
    turn writes before and after its content, and the generation prompt. Exact for templates that write each
    turn independently of the others (ChatML, the studio's fallback, Llama 3's); a BOS the template writes first
    is left out, since llama.cpp adds it when the file says so."""
    bos = tokenizer.bos_token or ""

    def strip_bos(text: str) -> str:
        return text[len(bos) :] if bos and text.startswith(bos) else text

    user = [{"role": "user", "content": _PROBE}]
    user_text = strip_bos(_render(tokenizer, template, user, False))
    user_pre, user_post = _around(user_text, _PROBE)
    generation = strip_bos(_render(tokenizer, template, user, True))[len(user_text) :]
    answered = strip_bos(_render(tokenizer, template, [*user, {"role": "assistant", "content": _PROBE}], False))
    assistant_pre, assistant_post = _around(answered[len(user_text) :], _PROBE)
    try:
        system = strip_bos(_render(tokenizer, template, [{"role": "system", "content": _PROBE}, *user], False))
        system_pre, system_post = _around(system[: system.rindex(user_text)], _PROBE)
    except Exception:  # a template that refuses a system turn (or drops it): it goes in as a user turn
        system_pre, system_post = user_pre, user_post
    return (
        "{{ range $i, $_ := .Messages }}{{ $last := eq (len (slice $.Messages $i)) 1 }}"
        f'{{{{ if eq .Role "system" }}}}{system_pre}{{{{ .Content }}}}{system_post}'
        f'{{{{ else if eq .Role "user" }}}}{user_pre}{{{{ .Content }}}}{user_post}'
        f'{{{{ else if eq .Role "assistant" }}}}{assistant_pre}{{{{ .Content }}}}'
        f"{{{{ if not $last }}}}{assistant_post}{{{{ end }}}}"
        "{{ end }}"
        f'{{{{ if and $last (ne .Role "assistant") }}}}{generation}{{{{ end }}}}'
        "{{ end }}"
    )


def _quoted(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)


def modelfile(
    tokenizer: PreTrainedTokenizerBase,
    gguf_name: str,
    chat_template: str | None,
    stops: list[str],
    context_length: int,
) -> str:
    """An Ollama Modelfile for the GGUF next to it: its chat layout, where to stop, and sampling defaults. A model
    without a chat template (a plain pretrain) completes the prompt as it is."""
    template = go_template(tokenizer, chat_template) if chat_template else "{{ .Prompt }}"
    if '"""' in template:
        raise NotConvertible('the chat template writes """, which a Modelfile cannot quote')
    lines = [f"FROM ./{gguf_name}", "", f'TEMPLATE """{template}"""', ""]
    lines += [f"PARAMETER stop {_quoted(s)}" for s in dict.fromkeys(s for s in stops if s)]
    lines += [f"PARAMETER temperature {TEMPERATURE}", f"PARAMETER num_ctx {min(context_length, MAX_NUM_CTX)}"]
    return "\n".join(lines) + "\n"
