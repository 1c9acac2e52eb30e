"""The torch-free counts of backend/method (each method's settings.trainable_parameters, which the estimate shows
before a run) equal the parameters PEFT and the freeze method actually train, for every PEFT method in the
registry, on the tiny pretrained model and on a grouped-query attention one."""

import json
from pathlib import Path
from typing import Any

import pytest
from peft import TaskType, get_peft_model
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, PreTrainedModel

from backend.method.registry import METHODS
from backend.method.settings import FreezeSettings, MethodSettings
from backend.method.shape import model_shape
from tests.workers.support import Pretrained
from workers.methods import freeze_bottom, peft_config
from workers.training import parameter_counts

# Settings variants per PEFT method; every PEFT method of the registry needs some (qlora aside: 4 bits need CUDA).
VARIANTS: dict[str, list[dict[str, Any]]] = {
    "lora": [{}, {"r": 4, "target_modules": ["q_proj", "v_proj"]}, {"use_dora": True}],
    "ia3": [{}, {"target_modules": ["q_proj", "v_proj", "up_proj"], "feedforward_modules": ["up_proj"]}],
    "prompt_tuning": [{"num_virtual_tokens": 8}, {"num_virtual_tokens": 3, "init": "text", "init_text": "Answer:"}],
    "prefix_tuning": [{"num_virtual_tokens": 5}, {"num_virtual_tokens": 5, "prefix_projection": True}],
}
NEEDS_CUDA = {"qlora"}
CASES = [(name, settings) for name, variants in VARIANTS.items() for settings in variants]

# Four query heads share two key/value heads: keys and values are half as wide as the hidden size.
GQA = LlamaConfig(
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=128,
)
# Heads wider than hidden / heads (as in Qwen3): the query and output projections are not square.
WIDE_HEADS = LlamaConfig(
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=32,
    vocab_size=128,
)


def peft_trainable(method: str, settings: MethodSettings, model: PreTrainedModel, base_path: Path) -> int:
    config = peft_config(METHODS[method], settings.peft_kwargs(str(base_path)), TaskType.CAUSAL_LM)
    return parameter_counts(get_peft_model(model, config))[0]


def test_every_peft_method_has_variants() -> None:
    peft_methods = {name for name, m in METHODS.items() if m.peft_config is not None} - NEEDS_CUDA
    assert peft_methods == set(VARIANTS)


@pytest.mark.parametrize(("method", "values"), CASES)
def test_count_matches_peft(pretrained: Pretrained, method: str, values: dict[str, Any]) -> None:
    settings = METHODS[method].settings.model_validate(values)
    assert isinstance(settings, MethodSettings)
    shape = model_shape(json.loads((pretrained.model_path / "config.json").read_text()))
    model = AutoModelForCausalLM.from_pretrained(pretrained.model_path)
    total = parameter_counts(model)[1]
    assert shape.total_parameters() == total
    expected = settings.trainable_parameters(shape, total)
    assert expected > 0
    assert peft_trainable(method, settings, model, pretrained.model_path) == expected


@pytest.mark.parametrize("config", [GQA, WIDE_HEADS], ids=["gqa", "wide-heads"])
@pytest.mark.parametrize(
    ("method", "values"),
    [
        ("lora", {}),
        ("lora", {"target_modules": ["q_proj", "o_proj"]}),
        ("ia3", {}),
        ("prefix_tuning", {}),
        ("prefix_tuning", {"prefix_projection": True}),
    ],
)
def test_count_matches_peft_with_grouped_query_attention(
    config: LlamaConfig, method: str, values: dict[str, Any], tmp_path: Path
) -> None:
    shape = model_shape(config.to_dict())
    assert shape.kv == config.head_dim * 2 and shape.q == config.head_dim * 4
    model = LlamaForCausalLM(config)
    total = parameter_counts(model)[1]
    assert shape.total_parameters() == total
    settings = METHODS[method].settings.model_validate(values)
    assert isinstance(settings, MethodSettings)
    assert peft_trainable(method, settings, model, tmp_path) == settings.trainable_parameters(shape, total)


@pytest.mark.parametrize("layers", [1, 2, 5])
def test_freeze_count_matches_freeze_bottom(pretrained: Pretrained, layers: int) -> None:
    shape = model_shape(json.loads((pretrained.model_path / "config.json").read_text()))
    model = AutoModelForCausalLM.from_pretrained(pretrained.model_path)
    total = parameter_counts(model)[1]
    freeze_bottom(model, layers, ("lm_head",))
    assert parameter_counts(model)[0] == FreezeSettings(trainable_layers=layers).trainable_parameters(shape, total)
