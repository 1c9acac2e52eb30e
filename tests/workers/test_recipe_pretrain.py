"""Pretraining the tiny preset end to end: loss falls, rows are written, model.zip reloads and generates."""

import zipfile
from pathlib import Path
from statistics import mean

import torch
from sqlalchemy import select
from transformers import AutoModelForCausalLM, AutoTokenizer

from backend.db import Artifact, Job, JobEvent, JobMetric, Model, session_scope
from tests.support import stored
from tests.workers.support import PRETRAIN_HP, Pretrained, Seed, create_job
from tests.workers.tokenizers import byte_tokenizer
from workers.tasks import run_job


def losses(job_id: int) -> list[float]:
    with session_scope() as s:
        rows = s.scalars(select(JobMetric).where(JobMetric.job_id == job_id).order_by(JobMetric.id))
        return [m.values["loss"] for m in rows if "loss" in m.values]


def test_pretrain_succeeds_and_records_its_run(pretrained: Pretrained) -> None:
    with session_scope() as s:
        job = s.get(Job, pretrained.job_id)
        assert job is not None
        assert job.status == "succeeded" and job.error is None
        assert job.current_step == job.total_steps == PRETRAIN_HP["max_steps"]
        assert job.device == "cpu"
        assert job.final_loss is not None and job.final_eval_loss is not None
        config = job.resolved_config
        assert config["hyperparameters"]["max_length"] == 64
        assert config["hyperparameters"]["weight_decay"] == 0.0  # defaults resolved, not only what was sent
        assert config["parameters"]["trainable"] == config["parameters"]["total"] > 0
        assert len(config["dataset"]["sha256"]) == 64
        assert set(config["libraries"]) >= {"torch", "transformers", "peft"}
        messages = [e.message for e in s.scalars(select(JobEvent).where(JobEvent.job_id == job.id))]
        assert any("tokenizer" in m for m in messages)
        # The run's last word (exports of this shared job, made by other tests, may log after it).
        assert [m for m in messages if not m.startswith("export ")][-1] == "job succeeded"


def test_pretrain_loss_falls(pretrained: Pretrained) -> None:
    points = losses(pretrained.job_id)
    assert len(points) == PRETRAIN_HP["max_steps"]  # logging_steps=1
    assert mean(points[-10:]) < mean(points[:10]) - 1.0


def test_pretrain_metrics_have_eval_points(pretrained: Pretrained) -> None:
    with session_scope() as s:
        rows = list(s.scalars(select(JobMetric).where(JobMetric.job_id == pretrained.job_id)))
    evals = [(m.step, m.values["eval_loss"]) for m in rows if "eval_loss" in m.values]
    assert [step for step, _ in evals] == [20, 40, 60]
    assert all(isinstance(v, float) for m in rows for v in m.values.values())
    assert not any("train_runtime" in m.values for m in rows)  # the run summary is not a curve point


def test_model_zip_reloads_and_generates(pretrained: Pretrained, tmp_path: Path) -> None:
    with session_scope() as s:
        # model.zip: other tests export this shared job too, each export a zip of its own.
        artifact = s.scalars(
            select(Artifact).where(Artifact.job_id == pretrained.job_id, Artifact.name == "model.zip")
        ).one()
        model_row = s.get(Model, pretrained.model_id)
        assert model_row is not None
        assert (model_row.source, model_row.name, model_row.architecture) == ("job", "tiny-fables", "llama")
    assert artifact.name == "model.zip"
    with zipfile.ZipFile(stored(artifact.path)) as zf:
        names = set(zf.namelist())
        zf.extractall(tmp_path)
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md"} <= names
    assert all("/" not in n for n in names)  # files at the root: the unzipped folder is the model

    model = AutoModelForCausalLM.from_pretrained(tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    assert model.config.vocab_size == len(tokenizer)
    inputs = tokenizer("The fox", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    assert out.shape[1] > inputs["input_ids"].shape[1]
    assert isinstance(tokenizer.decode(out[0]), str)
    assert "tiny-fables" in (tmp_path / "README.md").read_text()


def test_pretrain_reuses_another_models_tokenizer(seed: Seed, tmp_path: Path) -> None:
    # A tokenizer of one token per byte, saved without a pad token: nothing like the one the corpus would train.
    borrowed = byte_tokenizer()
    borrowed.pad_token = None
    borrowed.save_pretrained(tmp_path / "donor")
    with session_scope() as s:
        donor = Model(owner_id=seed.user_id, name="byte-donor", source="local", path=str(tmp_path / "donor"))
        s.add(donor)
        s.flush()
        donor_id = donor.id
    hp = {**PRETRAIN_HP, "max_steps": 4, "eval_steps": 4}
    job_id = create_job(seed, kind="pretrain", architecture="tiny", tokenizer_model_id=donor_id, hyperparameters=hp)
    assert run_job(job_id) == "succeeded"

    with session_scope() as s:
        messages = [e.message for e in s.scalars(select(JobEvent).where(JobEvent.job_id == job_id))]
        artifact = s.scalars(select(Artifact).where(Artifact.job_id == job_id)).one()
    assert any(m.startswith(f"using the tokenizer in {tmp_path / 'donor'}") for m in messages)
    assert not any("trained a byte-level BPE tokenizer" in m for m in messages)
    with zipfile.ZipFile(stored(artifact.path)) as zf:
        zf.extractall(tmp_path / "model")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "model")
    assert tokenizer.get_vocab() == borrowed.get_vocab()  # the donor's ids, not a vocabulary of our own
    assert tokenizer.pad_token == tokenizer.eos_token  # the collator needs a pad; EOS serves without a new token
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "model")
    assert model.config.vocab_size == len(tokenizer) == 258
    inputs = tokenizer("The fox", return_tensors="pt")
    assert inputs["input_ids"].shape[1] == len(b"The fox")  # one token per byte
