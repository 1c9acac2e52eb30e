"""Sequence classification on the pretrained tiny model: sentiment with a LoRA adapter (head saved with it) and full."""

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from peft import PeftModel
from sqlalchemy import select
from transformers import AutoModelForSequenceClassification, AutoTokenizer, PreTrainedTokenizerBase

from backend.db import Artifact, Job, JobEvent, JobMetric, JobSample, Model, session_scope
from tests.workers.support import FIXTURES, Pretrained, Seed, add_dataset, create_job, studio_env
from tests.workers.test_recipe_finetune import unzip_artifact
from workers.recipes.classification import accuracy_and_f1, label_names
from workers.tasks import run_job

CLASSIFY_HP = {
    "max_steps": 16,
    "max_length": 64,
    "batch_size": 8,
    "learning_rate": 5e-3,
    "logging_steps": 4,
    "eval_steps": 8,
    "validation_fraction": 0.25,
    "seed": 0,
}
LABELS = {0: "negative", 1: "positive"}
# Sentences the fixture does not hold, in its style: the sentiment word decides.
PROBES = [("The owl was happy all day.", "positive"), ("The owl was cruel all day.", "negative")]


def metric_rows(job_id: int) -> list[dict[str, float]]:
    with session_scope() as s:
        rows = s.scalars(select(JobMetric).where(JobMetric.job_id == job_id).order_by(JobMetric.step))
        return [m.values for m in rows]


def events(job_id: int) -> list[str]:
    with session_scope() as s:
        return [e.message for e in s.scalars(select(JobEvent).where(JobEvent.job_id == job_id))]


def fixture_accuracy(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, names: dict[int, str]) -> float:
    """Share of the fixture's sentences whose predicted label name is the file's (one right-padded batch)."""
    rows = [line.rsplit(",", 1) for line in (FIXTURES / "sentiment.csv").read_text().splitlines()[1:]]
    model.eval()
    with torch.no_grad():
        logits = model(**tokenizer([text for text, _ in rows], padding=True, return_tensors="pt")).logits
    predicted = [names[int(i)] for i in logits.argmax(-1)]
    return sum(p == label for p, (_, label) in zip(predicted, rows, strict=True)) / len(rows)


@pytest.fixture(scope="module")
def sentiment(seed: Seed) -> int:
    with studio_env(seed.data_dir):
        return add_dataset(seed.user_id, FIXTURES / "sentiment.csv")


def _run(seed: Seed, pretrained: Pretrained, dataset_id: int, method: str, **hp: object) -> int:
    job_id = create_job(
        seed,
        kind="finetune",
        method=method,
        objective="classification",
        dataset_id=dataset_id,
        base_model_id=pretrained.model_id,
        hyperparameters={**CLASSIFY_HP, **hp},
        watch_prompts=[PROBES[0][0]],
    )
    assert run_job(job_id) == "succeeded", events(job_id)
    return job_id


@pytest.fixture(scope="module")
def lora_job(seed: Seed, pretrained: Pretrained, sentiment: int) -> Iterator[int]:
    with studio_env(seed.data_dir):
        yield _run(seed, pretrained, sentiment, "lora", lora_r=8, lora_alpha=16)


def test_labels_are_sorted_names() -> None:
    assert label_names([{"label": "pos"}, {"label": "neg"}], [{"label": "pos"}]) == ["neg", "pos"]
    assert label_names([{"label": 10}, {"label": 2}, {"label": 1}]) == ["1", "2", "10"]  # numeric order
    with pytest.raises(ValueError, match="at least two labels"):
        label_names([{"label": "pos"}, {"label": "pos"}])


def test_accuracy_and_macro_f1() -> None:
    predicted, actual = np.array([0, 0, 0, 0, 1, 2]), np.array([0, 0, 1, 1, 1, 1])
    scores = accuracy_and_f1(predicted, actual)
    # class 0: tp 2, fp 2, fn 0 → 4/6; class 1: tp 1, fp 0, fn 3 → 2/5; class 2: tp 0, fp 1 → 0.
    assert scores["accuracy"] == pytest.approx(3 / 6)
    assert scores["f1"] == pytest.approx((4 / 6 + 2 / 5 + 0) / 3)
    assert accuracy_and_f1(np.array([1, 1]), np.array([1, 1])) == {"accuracy": 1.0, "f1": 1.0}


def test_lora_classification_logs_accuracy_and_f1(lora_job: int) -> None:
    rows = metric_rows(lora_job)
    assert [r for r in rows if "loss" in r]
    evals = [r for r in rows if "eval_loss" in r]
    # Plus the base model's evaluation at step 0 (a fine-tune's baseline).
    assert len(evals) == CLASSIFY_HP["max_steps"] // CLASSIFY_HP["eval_steps"] + 1
    assert all({"eval_accuracy", "eval_f1"} <= r.keys() for r in evals)
    assert evals[-1]["eval_accuracy"] > 0.5, evals
    with session_scope() as s:
        job = s.get(Job, lora_job)
        assert job is not None
        config = job.resolved_config
        samples = list(s.scalars(select(JobSample).where(JobSample.job_id == lora_job)))
        registered = list(s.scalars(select(Model).where(Model.job_id == lora_job)))
    assert config["labels"] == ["negative", "positive"]
    assert (config["train_examples"], config["eval_examples"]) == (60, 20)
    assert 0 < config["parameters"]["trainable"] < config["parameters"]["total"] / 10
    # Watch prompts are classified at every eval: a label name and its probability.
    assert len(samples) == len(evals) and all(s.output.split(" (p=")[0] in LABELS.values() for s in samples)
    assert not registered  # a classifier is not a base model for fine-tuning


def test_lora_adapter_reloads_with_its_head_and_predicts_names(
    lora_job: int, pretrained: Pretrained, tmp_path: Path
) -> None:
    names = unzip_artifact(lora_job, "adapter.zip", tmp_path)
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "README.md"} <= names
    card = (tmp_path / "README.md").read_text()
    assert "objective `classification`" in card and "Final accuracy" in card and "Final f1" in card
    assert "'positive'" in card  # the label map, in the loading snippet

    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    base = AutoModelForSequenceClassification.from_pretrained(
        pretrained.model_path, num_labels=2, id2label=LABELS, label2id={v: k for k, v in LABELS.items()}
    )
    base.config.pad_token_id = tokenizer.pad_token_id
    model = PeftModel.from_pretrained(base, tmp_path)
    # The trained head comes with the adapter: the reloaded classifier is better than chance on the data.
    accuracy = fixture_accuracy(model, tokenizer, LABELS)
    assert accuracy > 0.6

    # merged.zip: the same classifier as a plain model, label names in its config.
    unzip_artifact(lora_job, "merged.zip", tmp_path / "merged")
    merged = AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged")
    assert merged.config.id2label == LABELS
    assert fixture_accuracy(merged, tokenizer, merged.config.id2label) == pytest.approx(accuracy)


def test_full_classification_writes_a_classifier_with_label_names(
    seed: Seed, pretrained: Pretrained, sentiment: int, tmp_path: Path
) -> None:
    # Every weight moves: a gentler rate than LoRA's, for longer (16 steps leave some seeds at chance).
    job_id = _run(seed, pretrained, sentiment, "full", max_steps=24, learning_rate=1e-3)
    evals = [r for r in metric_rows(job_id) if "eval_accuracy" in r]
    assert evals and "eval_f1" in evals[-1] and evals[-1]["eval_accuracy"] > 0.5, evals
    with session_scope() as s:
        assert not list(s.scalars(select(Model).where(Model.job_id == job_id)))
    names = unzip_artifact(job_id, "model.zip", tmp_path)
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md"} <= names

    model = AutoModelForSequenceClassification.from_pretrained(tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    assert model.config.id2label == LABELS and model.config.pad_token_id == tokenizer.pad_token_id
    assert fixture_accuracy(model, tokenizer, model.config.id2label) > 0.6
    base = AutoModelForSequenceClassification.from_pretrained(pretrained.model_path, num_labels=2)
    tuned_weights, base_weights = model.state_dict(), base.state_dict()
    assert any(not torch.equal(tuned_weights[k], base_weights[k]) for k in base_weights if k in tuned_weights)


def test_freeze_trains_the_top_layers_and_the_head(seed: Seed, pretrained: Pretrained, sentiment: int) -> None:
    job_id = _run(seed, pretrained, sentiment, "freeze", max_steps=2, eval_steps=2, freeze_trainable_layers=1)
    with session_scope() as s:
        job = s.get(Job, job_id)
        assert job is not None
        params = job.resolved_config["parameters"]
        artifacts = [a.name for a in s.scalars(select(Artifact).where(Artifact.job_id == job_id))]
    assert 0 < params["trainable"] < params["total"]
    assert artifacts == ["model.zip"]
    assert any(m.startswith("freeze: training the top 1 of") for m in events(job_id))


def test_ia3_classification_trains_its_vectors_and_the_head(seed: Seed, pretrained: Pretrained, sentiment: int) -> None:
    """IA³ declares classification in the registry: its scaling vectors and the new head train, are saved in
    adapter.zip, and fold into merged.zip."""
    with studio_env(seed.data_dir):
        job_id = _run(seed, pretrained, sentiment, "ia3", max_steps=8, eval_steps=8)
    evals = [r for r in metric_rows(job_id) if "eval_loss" in r]
    assert evals and all("eval_accuracy" in r for r in evals)
    with session_scope() as s:
        job = s.get(Job, job_id)
        assert job is not None
        names = set(s.scalars(select(Artifact.name).where(Artifact.job_id == job_id)))
        trainable = job.resolved_config["parameters"]["trainable"]
    assert {"adapter.zip", "merged.zip"} <= names
    config = AutoModelForSequenceClassification.from_pretrained(pretrained.model_path, num_labels=2).config
    layers, hidden = config.num_hidden_layers, config.hidden_size
    kv = config.head_dim * config.num_key_value_heads
    # IA³'s vectors (keys and values at their outputs, down_proj at its input) plus the head, hidden x 2 labels.
    assert trainable == layers * (2 * kv + config.intermediate_size) + hidden * 2
