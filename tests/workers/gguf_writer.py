"""Write a Llama Hugging Face directory as a GGUF file, the way llama.cpp's converter lays it out, with the
`gguf` package: a real quantized GGUF for the import tests, built from a tiny model (no download).

Matrices whose rows divide into 32-value blocks are stored as Q8_0 (so the import has to de-quantize them);
the others fall back to F16, as llama.cpp does; norms stay F32.
"""

import json
from pathlib import Path
from typing import Any

import gguf
import numpy as np
from safetensors.numpy import load_file

Q8_BLOCK = 32
NAMES = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's reordering of q/k rows (rotary pairs interleaved); transformers undoes it when loading."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _gguf_name(hf: str) -> str:
    if hf == "model.embed_tokens.weight":
        return "token_embd.weight"
    if hf == "model.norm.weight":
        return "output_norm.weight"
    if hf == "lm_head.weight":
        return "output.weight"
    _, _, layer, rest = hf.split(".", 3)  # model.layers.<i>.<module>.weight
    return f"blk.{layer}.{NAMES[rest.removesuffix('.weight')]}.weight"


def _add_tokenizer(writer: gguf.GGUFWriter, model_dir: Path, vocab_size: int) -> None:
    tok = json.loads((model_dir / "tokenizer.json").read_text())
    tokens = [""] * vocab_size
    for token, index in tok["model"]["vocab"].items():
        tokens[index] = token
    types = [gguf.TokenType.NORMAL] * vocab_size
    for added in tok.get("added_tokens", []):
        tokens[added["id"]] = added["content"]
        types[added["id"]] = gguf.TokenType.CONTROL if added.get("special") else gguf.TokenType.USER_DEFINED
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]]
    config = json.loads((model_dir / "tokenizer_config.json").read_text())
    ids = {t: i for i, t in enumerate(tokens)}
    writer.add_tokenizer_model("gpt2")  # byte-level BPE
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(ids[config["bos_token"]])
    writer.add_eos_token_id(ids[config["eos_token"]])
    if config.get("pad_token"):
        writer.add_pad_token_id(ids[config["pad_token"]])
    writer.add_chat_template(
        "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )


def _add_tensor(writer: gguf.GGUFWriter, name: str, w: np.ndarray) -> None:
    w = w.astype(np.float32)
    if w.ndim == 1:
        writer.add_tensor(name, w)
    elif w.shape[-1] % Q8_BLOCK == 0:
        qtype = gguf.GGMLQuantizationType.Q8_0
        writer.add_tensor(name, gguf.quants.quantize(w, qtype), raw_dtype=qtype)
    else:
        writer.add_tensor(name, w.astype(np.float16))


def write_gguf(model_dir: Path, out: Path) -> Path:
    """`model_dir` (a LlamaForCausalLM saved with save_pretrained, byte-level BPE tokenizer) as GGUF at `out`."""
    config: dict[str, Any] = json.loads((model_dir / "config.json").read_text())
    h, n_head = config["hidden_size"], config["num_attention_heads"]
    n_kv = config.get("num_key_value_heads") or n_head
    rope = (config.get("rope_parameters") or {}).get("rope_theta") or config.get("rope_theta", 10000.0)
    writer = gguf.GGUFWriter(out, "llama")
    writer.add_name(model_dir.name)
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(h)
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_kv)
    writer.add_rope_dimension_count(h // n_head)
    writer.add_rope_freq_base(float(rope))
    writer.add_layer_norm_rms_eps(float(config["rms_norm_eps"]))
    writer.add_vocab_size(config["vocab_size"])
    _add_tokenizer(writer, model_dir, config["vocab_size"])
    for hf_name, w in sorted(load_file(str(model_dir / "model.safetensors")).items()):
        if hf_name.endswith("q_proj.weight"):
            w = _permute(w, n_head)
        elif hf_name.endswith("k_proj.weight"):
            w = _permute(w, n_kv)
        _add_tensor(writer, _gguf_name(hf_name), w)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out
