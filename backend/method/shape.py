"""A base model's sizes from its config.json, and the parameter counts they imply; torch-free, for the estimate
and each method's count of the parameters it trains."""

from dataclasses import dataclass
from typing import Any


def _dim(config: dict[str, Any], *keys: str) -> int:
    """The first of `keys` that holds a sane size (an uploaded config.json may hold anything)."""
    for key in keys:
        value = config.get(key)
        if type(value) is int and 0 < value < 2**40:
            return value
    return 0


@dataclass(frozen=True)
class ModelShape:
    """The dimensions of a Llama/Qwen/Mistral-style decoder (0 where the config has none)."""

    hidden: int
    intermediate: int
    layers: int
    q: int  # width of the query projection: head_dim x heads (not always hidden: Qwen3's head_dim is wider)
    kv: int  # width of the key and value projections: head_dim x key-value heads (less than hidden with GQA)
    vocab: int
    tied: bool
    positions: int = 0  # the longest sequence the model takes (max_position_embeddings), 0 when unknown

    @property
    def known(self) -> bool:
        return bool(self.hidden and self.layers and self.vocab)

    def linears(self) -> dict[str, tuple[int, int]]:
        """(in, out) features of each linear layer of a block, by the module names Llama gives them."""
        h, i, q, kv = self.hidden, self.intermediate, self.q, self.kv
        return {
            "q_proj": (h, q),
            "k_proj": (h, kv),
            "v_proj": (h, kv),
            "o_proj": (q, h),
            "gate_proj": (h, i),
            "up_proj": (h, i),
            "down_proj": (i, h),
        }

    def layer_parameters(self) -> int:
        h, i, q, kv = self.hidden, self.intermediate, self.q, self.kv
        return 2 * h * q + 2 * h * kv + 3 * h * i + 2 * h  # attention, gated MLP, two norms

    def total_parameters(self) -> int:
        embeddings = self.vocab * self.hidden * (1 if self.tied else 2)
        return embeddings + self.layers * self.layer_parameters() + self.hidden

    def matching(self, targets: list[str] | None) -> dict[str, tuple[int, int]]:
        """The block's linear layers a list of target names selects (all of them when None)."""
        if not targets:
            return self.linears()
        return {n: io for n, io in self.linears().items() if any(t == n or n.endswith(t) for t in targets)}


def model_shape(config: dict[str, Any]) -> ModelShape:
    """The sizes the estimates need, from a config.json (a multimodal one keeps them under text_config)."""
    if not _dim(config, "hidden_size", "n_embd") and isinstance(config.get("text_config"), dict):
        config = config["text_config"]
    h = _dim(config, "hidden_size", "n_embd")
    heads = _dim(config, "num_attention_heads", "n_head") or 1
    head_dim = _dim(config, "head_dim") or h // heads
    return ModelShape(
        hidden=h,
        intermediate=_dim(config, "intermediate_size") or 4 * h,
        layers=_dim(config, "num_hidden_layers", "n_layer"),
        q=head_dim * heads,
        kv=head_dim * (_dim(config, "num_key_value_heads") or heads),
        vocab=_dim(config, "vocab_size"),
        tied=config.get("tie_word_embeddings") is True,
        positions=_dim(config, "max_position_embeddings", "n_positions"),
    )
