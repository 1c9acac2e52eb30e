"""The torch-free estimate counts the same parameters that peft and the freeze method actually train."""

import json

import pytest
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from backend.job.estimate import model_shape, total_parameters, trainable_parameters
from backend.job.schemas import Hyperparameters
from tests.workers.support import Pretrained


@pytest.mark.parametrize(
    "hp",
    [
        {"lora_r": 8},
        {"lora_r": 4, "lora_target_modules": ["q_proj", "v_proj"]},
        {"lora_r": 8, "lora_use_dora": True},
    ],
)
def test_lora_count_matches_peft(pretrained: Pretrained, hp: dict[str, object]) -> None:
    params = Hyperparameters.model_validate(hp)
    shape = model_shape(json.loads((pretrained.model_path / "config.json").read_text()))
    model = AutoModelForCausalLM.from_pretrained(pretrained.model_path)
    total = sum(p.numel() for p in model.parameters())
    assert total_parameters(shape) == total
    peft_model = get_peft_model(
        model,
        LoraConfig(
            r=params.lora_r,
            target_modules=params.lora_target_modules or "all-linear",
            use_dora=params.lora_use_dora,
        ),
    )
    trained = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    assert trainable_parameters(shape, total, "lora", params) == trained
