"""Packing on a CUDA device (marked `gpu`: skipped without one): packed and padded batches give the same
per-example losses under bf16 autocast, with sdpa and, where flash-attn is installed, FlashAttention-2 (which reads
packed rows as variable-length spans)."""

import pytest
import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.utils import is_flash_attn_2_available

from tests.workers.test_packing import examples
from workers.data import PadCollator
from workers.packing import PackingCollator, owners_of, pack_rows, per_example_losses

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

IMPLEMENTATIONS = ["sdpa", "flash_attention_2"]


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_packed_rows_keep_examples_apart_on_cuda(implementation: str) -> None:
    if implementation == "flash_attention_2" and not is_flash_attn_2_available():
        pytest.skip("flash-attn is not installed")
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=0,
    )
    config._attn_implementation = implementation
    model = LlamaForCausalLM(config)
    nn.Module.to(model, device="cuda", dtype=torch.bfloat16)
    batch = examples([30, 7, 12, 25, 3, 18, 9, 40])
    packed = {k: v.cuda() for k, v in PackingCollator(pad_token_id=0, row_length=48)(batch).items()}
    order = [i for row in pack_rows([len(e["input_ids"]) for e in batch], 48) for i in row]
    alone = []
    for i in order:  # each example in a row of its own is the reference
        single = {k: v.cuda() for k, v in PadCollator(pad_token_id=0)([batch[i]]).items()}
        alone.append(per_example_losses(model, single, owners_of(single, 0))[0])
    together = per_example_losses(model, packed, owners_of(packed, 0))
    assert together == pytest.approx(alone, rel=2e-2)  # bf16: about 3 significant digits
