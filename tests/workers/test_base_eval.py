"""Did fine-tuning help? The base model's evaluation at step 0, the overfitting warning, and an adapter that names
its base model instead of a server path."""

import json
import zipfile
from pathlib import Path

import pytest
from peft import PeftModel
from sqlalchemy import select
from transformers import AutoModelForCausalLM, TrainerControl, TrainerState, TrainingArguments

from backend.db import Artifact, JobMetric, Model, session_scope
from tests.support import stored
from tests.workers.support import Pretrained, Seed, create_job, messages, studio_env
from tests.workers.test_export import queue_export, row, unzip
from workers.artifacts import base_reference
from workers.export import export_weights
from workers.metrics import Guards, JobCallback, OverfitWatch
from workers.tasks import run_job

BASE_EVAL_HP = {
    "max_steps": 6,
    "max_length": 64,
    "batch_size": 8,
    "learning_rate": 2e-3,
    "logging_steps": 1,
    "eval_steps": 3,
    "validation_fraction": 0.1,
    "lora_r": 4,
    "seed": 0,
}


def metric_points(job_id: int) -> list[tuple[int, dict[str, float]]]:
    with session_scope() as s:
        rows = s.scalars(select(JobMetric).where(JobMetric.job_id == job_id).order_by(JobMetric.id))
        return [(m.step, dict(m.values)) for m in rows]


@pytest.fixture(scope="module")
def lora_sft_job(seed: Seed, pretrained: Pretrained) -> int:
    # Module scope is set up before the per-test `worker_env` fixture, so it switches the environment itself.
    with studio_env(seed.data_dir):
        job_id = create_job(
            seed,
            kind="finetune",
            method="lora",
            objective="sft",
            dataset_id=seed.alpaca_dataset_id,
            base_model_id=pretrained.model_id,
            hyperparameters=BASE_EVAL_HP,
        )
        assert run_job(job_id) == "succeeded"
        return job_id


def test_finetune_evaluates_the_base_model_at_step_0(lora_sft_job: int) -> None:
    points = metric_points(lora_sft_job)
    evals = [(step, values) for step, values in points if "eval_loss" in values]
    assert [step for step, _ in evals] == [0, 3, 6]
    base = evals[0][1]
    # The base model's eval loss and token accuracy, before any training point was logged.
    assert {"eval_loss", "eval_token_accuracy"} <= base.keys()
    assert 0.0 <= base["eval_token_accuracy"] <= 1.0
    assert points[0][0] == 0 and not any("loss" in values for s, values in points if s == 0)
    # LoRA starts as the identity (B = 0), so its eval at step 0 is the base's; training must then move it.
    assert evals[-1][1]["eval_loss"] != pytest.approx(base["eval_loss"])


def test_pretraining_has_no_step_0_evaluation(pretrained: Pretrained) -> None:
    # A model from random init has no "base" worth measuring: its first eval comes at eval_steps.
    assert all(step > 0 for step, values in metric_points(pretrained.job_id) if "eval_loss" in values)


def test_adapter_names_its_base_model_not_a_server_path(
    lora_sft_job: int, pretrained: Pretrained, tmp_path: Path
) -> None:
    with session_scope() as s:
        artifact = s.scalars(
            select(Artifact).where(Artifact.job_id == lora_sft_job, Artifact.name == "adapter.zip")
        ).one()
        base_name = s.get_one(Model, pretrained.model_id).name
    with zipfile.ZipFile(stored(artifact.path)) as zf:
        zf.extractall(tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == base_name == "tiny-fables"
    assert str(pretrained.model_path) not in (tmp_path / "adapter_config.json").read_text()
    # Given the base model explicitly, the adapter loads whatever its config names.
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(pretrained.model_path), tmp_path)
    assert model.peft_config["default"].r == 4


def test_checkpoint_adapter_export_names_its_base_too(seed: Seed, lora_sft_job: int, tmp_path: Path) -> None:
    checkpoint = seed.data_dir / "jobs" / str(lora_sft_job) / "checkpoints" / "checkpoint-6"
    # The Trainer's checkpoint keeps what PEFT wrote: the folder the base was loaded from.
    assert json.loads((checkpoint / "adapter_config.json").read_text())["base_model_name_or_path"].startswith("/")
    export_id = queue_export(seed, lora_sft_job, checkpoint="checkpoint-6", format="adapter", dtype="float32")
    assert export_weights(export_id) == "done"
    out = unzip(seed, row(export_id), tmp_path / "export")
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == "tiny-fables"


def test_a_hub_base_is_named_by_its_hub_id(seed: Seed) -> None:
    with session_scope() as s:
        hub = Model(owner_id=seed.user_id, name="my smol", source="hub", path="/srv/x", details={"hub_id": "org/smol"})
        s.add(hub)
        s.flush()
        hub_id = hub.id
    job_id = create_job(seed, kind="finetune", method="lora", base_model_id=hub_id)
    assert base_reference(job_id) == "org/smol"
    assert base_reference(create_job(seed, kind="pretrain", architecture="tiny")) is None


# --- the overfitting detector ---------------------------------------------------------------------------------------


def feed(watch: OverfitWatch, rounds: list[tuple[list[float], float]]) -> list[str | None]:
    """Training losses logged, then an evaluation, per round (steps 10, 20, ...); the warning of each eval."""
    out = []
    for i, (losses, eval_loss) in enumerate(rounds, 1):
        for loss in losses:
            watch.train_loss(loss)
        out.append(watch.eval_loss(10 * i, eval_loss))
    return out


def test_overfit_warning_after_n_rising_evals_while_training_loss_falls() -> None:
    rounds = [([2.0, 1.9], 1.50), ([1.6, 1.5], 1.55), ([1.3, 1.2], 1.60), ([1.0, 0.9], 1.70), ([0.7], 1.80)]
    warnings = feed(OverfitWatch(evals=3), rounds)
    assert warnings[:3] == [None, None, None]
    assert warnings[3] is not None and warnings[4] is None  # once per streak
    assert warnings[3].startswith("Overfitting: eval loss rose 3 evaluations in a row (1.5000 at step 10 →")
    assert "1.7000 at step 40" in warnings[3] and "lowest eval loss was 1.5000 at step 10" in warnings[3]


def test_no_overfit_warning_when_training_loss_rises_too_or_eval_dips() -> None:
    # Both losses rising: a bad learning rate, not memorization.
    both = [([1.0], 1.5), ([1.1], 1.6), ([1.2], 1.7), ([1.3], 1.8)]
    assert feed(OverfitWatch(evals=3), both) == [None] * 4
    # A dip breaks the streak: three rises are needed again after it.
    dip = [([2.0], 1.5), ([1.8], 1.6), ([1.6], 1.55), ([1.4], 1.6), ([1.2], 1.7)]
    assert feed(OverfitWatch(evals=3), dip) == [None] * 5
    assert feed(OverfitWatch(evals=None), [([2.0 - i / 10], 1.0 + i / 10) for i in range(6)]) == [None] * 6


def test_overfit_streak_may_start_at_the_base_models_evaluation() -> None:
    watch = OverfitWatch(evals=2)
    assert watch.eval_loss(0, 1.0) is None  # the base model: no training loss before it
    assert feed(watch, [([1.5, 1.4], 1.1), ([1.0], 1.2)])[-1] is not None


def test_overfit_warning_is_a_job_event(seed: Seed) -> None:
    job_id = create_job(seed, kind="pretrain", name="overfit-event")
    callback = JobCallback(job_id, guards=Guards(), overfit=OverfitWatch(evals=2))
    args, state, control = (
        TrainingArguments(output_dir=str(seed.data_dir / "unused"), report_to="none"),
        TrainerState(),
        TrainerControl(),
    )
    for step, loss, eval_loss in [(1, 2.0, 1.0), (2, 1.5, 1.1), (3, 1.0, 1.2)]:
        state.global_step = step
        callback.on_log(args, state, control, logs={"loss": loss})
        callback.on_evaluate(args, state, control, metrics={"eval_loss": eval_loss})
    warnings = [m for m in messages(job_id) if m.startswith("Overfitting:")]
    assert len(warnings) == 1 and "rose 2 evaluations in a row" in warnings[0]
