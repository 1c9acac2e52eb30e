"""Model FLOPs utilisation: the FLOPs a training token costs (frozen weights 4, trained 6, the embedding lookup
nothing), the same count from the worker's real model as from the estimate's config, the matmul peak, and `mfu` on
every training point of a real run, equal to the job's FLOPs per token x tokens per second over the peak."""

import math
from dataclasses import replace

import pytest
import torch
from peft import LoraConfig, TaskType, get_peft_model
from sqlalchemy import select
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from backend.db import JobMetric, Model, session_scope
from backend.job.estimate import flops_per_token
from backend.method.shape import model_shape
from backend.model.presets import PRESETS
from tests.support import stored
from tests.workers.support import Pretrained, Seed, create_job, get_job, messages
from workers import flops as flops_module
from workers import registry
from workers.flops import Peak, lookup_weights, measure_peak
from workers.tasks import run_job
from workers.token_meter import TokenMeter
from workers.training import parameter_counts

TINY = model_shape(PRESETS["tiny"])  # untied: 2048 x 128 input embedding, and as many weights in the head
ATTENTION = 12 * TINY.layers * TINY.hidden * 64  # per token at 64 positions


def test_full_training_costs_six_flops_per_weight_that_multiplies() -> None:
    total = TINY.total_parameters()
    lookup = TINY.vocab * TINY.hidden
    assert flops_per_token(TINY, total, total, 64) == 6 * (total - lookup) + ATTENTION


def test_frozen_weights_cost_four_and_lora_about_two_thirds_of_full() -> None:
    total = TINY.total_parameters()
    full = flops_per_token(TINY, total, total, 0)
    lora = flops_per_token(TINY, total, 1000, 0)
    assert lora == 4 * (total - TINY.vocab * TINY.hidden) + 2 * 1000
    assert 0.66 < lora / full < 0.67  # 1000 trained weights nudge it past 2/3


def test_a_tied_embedding_counts_once_as_the_head() -> None:
    tied = replace(TINY, tied=True)
    total = tied.total_parameters()  # one vocab x hidden matrix fewer
    assert flops_per_token(tied, total, total, 0) == 6 * total


@pytest.mark.parametrize("tied", [False, True])
def test_the_worker_counts_what_the_estimate_counts(tied: bool) -> None:
    """From the model itself (its parameters, its embedding and head) the same FLOPs as from its config alone, for
    full training and for a LoRA adapter over the frozen model."""
    config = LlamaConfig(**PRESETS["tiny"], tie_word_embeddings=tied)
    model = LlamaForCausalLM(config)
    shape = model_shape(config.to_dict())
    assert lookup_weights(model) == (0 if tied else TINY.vocab * TINY.hidden)
    trainable, total = parameter_counts(model)
    assert flops_per_token(shape, total, trainable, 64, lookup=lookup_weights(model)) == flops_per_token(
        shape, shape.total_parameters(), shape.total_parameters(), 64
    )
    adapted = get_peft_model(model, LoraConfig(r=4, task_type=TaskType.CAUSAL_LM, target_modules=["q_proj"]))
    assert lookup_weights(adapted) == lookup_weights(model)  # PeftModel hands the question to its base
    trainable, total = parameter_counts(adapted)
    assert trainable == 2 * 4 * TINY.hidden * TINY.layers
    counted = flops_per_token(shape, total, trainable, 64, lookup=lookup_weights(adapted))
    assert counted == 4 * (total - lookup_weights(model)) + 2 * trainable + ATTENTION


def test_the_peak_is_a_timed_fp32_matmul_with_the_process_threads() -> None:
    peak = measure_peak(size=256, seconds=0.05)
    assert (peak.dtype, peak.device, peak.threads, peak.size) == ("fp32", "cpu", torch.get_num_threads(), 256)
    # Above 100 MFLOP/s (any CPU of this century) and below 100 TFLOP/s (no CPU of today).
    assert 1e8 < peak.flops_per_second < 1e14
    assert peak.details()["flops_per_second"] == peak.flops_per_second


def test_meter_reports_model_flops_over_the_peak() -> None:
    meter = TokenMeter(flops_per_token=3e6, peak=Peak(1e11, "fp32", "cpu", 2, 2048))
    meter.count({"input_ids": torch.ones(2, 50, dtype=torch.long)})
    meter._seconds = 0.5  # the steps' time since the previous point: 100 tokens in half a second
    values = meter.point()
    assert values["tokens_per_second"] == 200
    assert math.isclose(values["model_tflops"], 3e6 * 200 / 1e12)
    assert math.isclose(values["mfu"], 3e6 * 200 / 1e11)
    # No FLOPs per token (a meter built without them): no utilisation, and no peak measured for it.
    bare = TokenMeter()
    assert bare.peak is None
    bare.count({"input_ids": torch.ones(1, 4, dtype=torch.long)})
    bare._seconds = 1.0
    assert "mfu" not in bare.point()


def test_training_workers_report_their_peak(monkeypatch: pytest.MonkeyPatch) -> None:
    """A training worker measures its peak once when it registers (cached for its jobs); an analysis worker, which
    trains nothing, spends no second of its cores on it."""
    peak = Peak(2.5e11, "fp32", "cpu", 2, 2048)
    monkeypatch.setattr(flops_module._Cache, "peak", peak)
    assert registry.describe("studio")["details"]["peak_matmul"] == peak.details()
    assert registry.describe("studio,studio.analysis")["details"]["peak_matmul"] == peak.details()
    assert "peak_matmul" not in registry.describe("studio.analysis")["details"]


def test_a_run_charts_mfu_on_every_training_point(pretrained: Pretrained) -> None:
    """The session's tiny pretraining: each training point's mfu is the job's stored FLOPs per token times its
    tokens per second over the process's measured peak; evaluation points carry none."""
    per_token = get_job(pretrained.job_id).resolved_config["flops_per_token"]
    peak = flops_module.device_peak().flops_per_second  # measured by this process when the run began
    with session_scope() as s:
        points = [m.values for m in s.scalars(select(JobMetric).where(JobMetric.job_id == pretrained.job_id))]
    train = [v for v in points if "loss" in v]
    assert train and all(v["mfu"] > 0 for v in train)
    for v in train:
        assert math.isclose(v["mfu"], per_token * v["tokens_per_second"] / peak, rel_tol=1e-9)
        assert math.isclose(v["model_tflops"], per_token * v["tokens_per_second"] / 1e12, rel_tol=1e-9)
    assert not any("mfu" in v for v in points if "eval_loss" in v)


@pytest.mark.slow
def test_a_compiled_job_trains_and_saves_a_plain_model(seed: Seed) -> None:
    """torch_compile: the Trainer wraps the model in torch.compile; the saved model is the plain one (no
    `_orig_mod.` prefixes), loads with from_pretrained, and the run's points still carry mfu."""
    hp = {"max_steps": 4, "max_length": 32, "batch_size": 4, "torch_compile": True, "validation_fraction": 0}
    job_id = create_job(seed, kind="pretrain", architecture="tiny", hyperparameters=hp)
    assert run_job(job_id) == "succeeded", messages(job_id)
    with session_scope() as s:
        model = s.scalars(select(Model).where(Model.job_id == job_id)).one()
        points = [m.values for m in s.scalars(select(JobMetric).where(JobMetric.job_id == job_id))]
    reloaded = AutoModelForCausalLM.from_pretrained(stored(model.path))
    assert not any("_orig_mod" in name for name, _ in reloaded.named_parameters())
    assert all(v["mfu"] > 0 for v in points if "loss" in v)
