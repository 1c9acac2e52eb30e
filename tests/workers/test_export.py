"""Weight exports on the worker, in process on SQLite, from a tiny LoRA job actually trained: a checkpoint merged
into its base as float16 gives the logits of base + adapter; the final adapter exported as bfloat16 loads with
peft; a full model exports in its dtype; progress goes through the phases; a second delivery does nothing; a
checkpoint deleted before the worker runs fails the export and leaves no artifact."""

import itertools
import shutil
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import PeftModel
from safetensors import safe_open
from safetensors.torch import load_file
from sqlalchemy import select
from transformers import AutoModelForCausalLM

import workers.export as worker
from backend.db import Artifact, Export, User, session_scope
from backend.export.lifecycle import exports_dir
from backend.export.schemas import ExportCreate
from backend.export.service import create_export
from tests.support import stored
from tests.workers.support import Pretrained, Seed, create_job, sft_job, studio_env
from workers.tasks import run_job

LORA_HP = {
    "max_steps": 10,
    "max_length": 64,
    "batch_size": 8,
    "learning_rate": 5e-3,
    "logging_steps": 5,
    "checkpoint_steps": 5,
    "validation_fraction": 0.1,
    "seed": 0,
    "lora_r": 4,
    "lora_alpha": 8,
}
TEXT = "A hungry fox walked along a garden wall"


@pytest.fixture(scope="module")
def lora_job(seed: Seed, pretrained: Pretrained) -> Iterator[int]:
    with studio_env(seed.data_dir):  # module scope runs before the per-test environment fixture
        job_id = create_job(
            seed,
            kind="finetune",
            method="lora",
            objective="sft",
            dataset_id=seed.alpaca_dataset_id,
            base_model_id=pretrained.model_id,
            hyperparameters=LORA_HP,
        )
        assert run_job(job_id) == "succeeded"
        yield job_id


@pytest.fixture
def progress(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Every progress row the worker writes, in order (what the job page's stream would have shown)."""
    seen: list[dict[str, Any]] = []
    real = worker.record_progress

    def record(export_id: int, values: dict[str, Any]) -> bool:
        seen.append(dict(values))
        return real(export_id, values)

    monkeypatch.setattr(worker, "record_progress", record)
    return seen


def queue_export(seed: Seed, job_id: int, **body: Any) -> int:
    """An export row as POST /api/jobs/{id}/exports creates it (the same checks)."""
    with session_scope() as s:
        user = s.get(User, seed.user_id)
        assert user is not None
        row, created = create_export(s, user=user, job_id=job_id, data=ExportCreate.model_validate(body))
        assert created
        return row.id


def row(export_id: int) -> Export:
    with session_scope() as s:
        found = s.get(Export, export_id)
        assert found is not None
        return found


def unzip(seed: Seed, export: Export, into: Path) -> Path:
    with session_scope() as s:
        art = s.scalars(
            select(Artifact).where(Artifact.job_id == export.job_id, Artifact.name == export.artifact_name)
        ).one()
        assert art.size_bytes == export.size_bytes
        with zipfile.ZipFile(stored(art.path)) as zf:
            zf.extractall(into)
    return into


def logits(model: Any, tokenizer_dir: Path) -> torch.Tensor:
    from workers.examples import load_tokenizer

    inputs = load_tokenizer(tokenizer_dir)(TEXT, return_tensors="pt")
    with torch.no_grad():
        return model(**inputs).logits.float()


def test_checkpoint_merged_as_float16(
    seed: Seed, pretrained: Pretrained, lora_job: int, progress: list[dict[str, Any]], tmp_path: Path
) -> None:
    export_id = queue_export(seed, lora_job, checkpoint="checkpoint-5", format="merged", dtype="float16")
    assert worker.export_weights(export_id) == "done"
    assert worker.export_weights(export_id) == "skipped"  # a second delivery finds it claimed
    done = row(export_id)
    assert (done.status, done.error, done.artifact_name) == ("done", None, "checkpoint-5-merged-float16.zip")
    assert done.started_at is not None and done.finished_at is not None and done.size_bytes

    phases = [p for p, _ in itertools.groupby(r["phase"] for r in progress)]
    assert phases == ["loading", "merging", "saving", "zipping"], phases
    merging = [r for r in progress if r["phase"] == "merging"]
    assert merging[-1]["done"] == merging[-1]["total"] > 1 and merging[-1]["unit"] == "layers"
    zipping = [r for r in progress if r["phase"] == "zipping"]
    assert zipping[-1]["unit"] == "bytes" and zipping[-1]["done"] == zipping[-1]["total"] > 0

    out = unzip(seed, done, tmp_path / "merged")
    assert (out / "config.json").is_file() and list(out.glob("*.safetensors"))
    assert "checkpoint-5" in (out / "README.md").read_text()
    merged = AutoModelForCausalLM.from_pretrained(out, dtype="auto")
    assert {p.dtype for p in merged.parameters()} == {torch.float16}
    work_dir = exports_dir(lora_job) / str(export_id) / "attempt-1"
    assert [p.name for p in work_dir.iterdir()] == [done.artifact_name]  # the work folder holds only the zip

    # The reference: base + adapter, in fp32. The fp16 copy (computed in fp32) matches it within fp16 rounding,
    # and the adapter moved the logits by far more than that, so a merge that did nothing would fail here.
    base = AutoModelForCausalLM.from_pretrained(pretrained.model_path, dtype=torch.float32)
    plain = logits(base, out)
    checkpoint = seed.data_dir / "jobs" / str(lora_job) / "checkpoints" / "checkpoint-5"
    expected = logits(PeftModel.from_pretrained(base, checkpoint), out)
    got = logits(merged.float(), out)
    error = (got - expected).abs().max().item()
    assert error < 0.01, error
    assert (expected - plain).abs().max().item() > 10 * error


def test_final_adapter_as_bfloat16_loads_with_peft(
    seed: Seed, pretrained: Pretrained, lora_job: int, tmp_path: Path
) -> None:
    export_id = queue_export(seed, lora_job, format="adapter", dtype="bfloat16")
    assert worker.export_weights(export_id) == "done"
    out = unzip(seed, row(export_id), tmp_path / "adapter")
    assert row(export_id).artifact_name == "final-adapter-bfloat16.zip"
    with safe_open(str(out / "adapter_model.safetensors"), framework="pt") as f:
        dtypes = {f.get_tensor(k).dtype for k in f.keys()}  # noqa: SIM118 (a safetensors handle, not a dict)
    assert dtypes == {torch.bfloat16}
    assert (out / "tokenizer_config.json").is_file() and not (out / "optimizer.pt").exists()
    base = AutoModelForCausalLM.from_pretrained(pretrained.model_path, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, out)
    original = seed.data_dir / "jobs" / str(lora_job) / "adapter"
    reference = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(pretrained.model_path, dtype=torch.float32), original
    )
    assert (logits(model, out) - logits(reference, out)).abs().max().item() < 0.05


def test_full_model_in_its_dtype(seed: Seed, pretrained: Pretrained, tmp_path: Path) -> None:
    export_id = queue_export(seed, pretrained.job_id, format="model", dtype="bfloat16")
    assert worker.export_weights(export_id) == "done"
    out = unzip(seed, row(export_id), tmp_path / "model")
    model = AutoModelForCausalLM.from_pretrained(out, dtype="auto")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    original = AutoModelForCausalLM.from_pretrained(pretrained.model_path, dtype=torch.float32)
    assert torch.allclose(logits(model.float(), out), logits(original, out), atol=0.1)


def test_a_checkpoint_deleted_before_the_run_fails_the_export(seed: Seed, lora_job: int) -> None:
    checkpoints = seed.data_dir / "jobs" / str(lora_job) / "checkpoints"
    shutil.copytree(checkpoints / "checkpoint-5", checkpoints / "checkpoint-7")
    export_id = queue_export(seed, lora_job, checkpoint="checkpoint-7", format="merged", dtype="float32")
    shutil.rmtree(checkpoints / "checkpoint-7")  # e.g. a resume from checkpoint-5 discarded it
    assert worker.export_weights(export_id) == "failed"
    failed = row(export_id)
    assert failed.status == "failed" and failed.finished_at is not None
    assert failed.error is not None and "no checkpoint checkpoint-7" in failed.error
    assert failed.artifact_name is None
    with session_scope() as s:
        names = s.scalars(select(Artifact.name).where(Artifact.job_id == lora_job)).all()
    assert not [n for n in names if n.startswith("checkpoint-7")]
    assert not (exports_dir(lora_job) / str(export_id)).exists()


def test_a_classifier_adapter_merges_with_its_head(seed: Seed, pretrained: Pretrained, tmp_path: Path) -> None:
    from transformers import AutoModelForSequenceClassification

    from tests.workers.support import FIXTURES, add_dataset

    job_id = create_job(
        seed,
        kind="finetune",
        method="lora",
        objective="classification",
        dataset_id=add_dataset(seed.user_id, FIXTURES / "sentiment.csv"),
        base_model_id=pretrained.model_id,
        hyperparameters={"max_steps": 4, "max_length": 64, "batch_size": 8, "validation_fraction": 0.25, "seed": 0},
    )
    assert run_job(job_id) == "succeeded"
    export_id = queue_export(seed, job_id, format="merged", dtype="float32")
    assert worker.export_weights(export_id) == "done", row(export_id).error
    out = unzip(seed, row(export_id), tmp_path / "classifier")
    merged = AutoModelForSequenceClassification.from_pretrained(out)
    assert set(merged.config.id2label.values()) == {"negative", "positive"}
    labels = dict(merged.config.id2label)
    base = AutoModelForSequenceClassification.from_pretrained(
        pretrained.model_path, num_labels=2, id2label=labels, label2id={v: k for k, v in labels.items()}
    )
    base.config.pad_token_id = merged.config.pad_token_id
    reference = PeftModel.from_pretrained(base, seed.data_dir / "jobs" / str(job_id) / "adapter")
    assert torch.allclose(logits(merged, out), logits(reference, out), atol=1e-4)


def test_an_export_taken_back_by_the_reaper_stops_and_the_next_attempt_does_it(
    seed: Seed, lora_job: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    from datetime import timedelta

    from sqlalchemy import update

    from backend.db import utcnow
    from backend.export import lifecycle
    from backend.work import reaper

    export_id = queue_export(seed, lora_job, checkpoint="checkpoint-10", format="adapter", dtype="float16")
    sent: list[int] = []
    monkeypatch.setattr(reaper, "send", lambda kind, row_id: sent.append(row_id) is None)
    swept = reaper.Swept()

    def reaped_while_saving(eid: int, values: dict[str, Any]) -> bool:
        if values["phase"] == "saving" and not swept.requeued:  # its worker looks dead: silent past the lease
            with session_scope() as s:
                s.execute(update(Export).where(Export.id == eid).values(heartbeat_at=utcnow() - timedelta(hours=1)))
            reaper.reap(reaper.RECOVERIES["export"], swept)
        return lifecycle.record_progress(eid, values)

    monkeypatch.setattr(worker, "record_progress", reaped_while_saving)
    assert worker.export_weights(export_id) == "failed"  # this attempt stops, and records nothing
    assert swept.requeued["export"] == [export_id] and sent == [export_id]
    queued = row(export_id)
    assert (queued.status, queued.error, queued.attempt, queued.lease_worker) == ("queued", None, 1, None)
    with session_scope() as s:
        names = s.scalars(select(Artifact.name).where(Artifact.job_id == lora_job)).all()
    assert "checkpoint-10-adapter-float16.zip" not in names
    assert not (exports_dir(lora_job) / str(export_id)).exists()

    # The task sent again: the next attempt exports it from the start.
    monkeypatch.setattr(worker, "record_progress", lifecycle.record_progress)
    assert worker.export_weights(export_id) == "done"
    done = row(export_id)
    assert (done.status, done.error, done.attempt, done.artifact_name) == (
        "done",
        None,
        2,
        "checkpoint-10-adapter-float16.zip",
    )


def test_a_prompt_tuning_adapter_exports_as_adapter_and_never_merged(
    seed: Seed, pretrained: Pretrained, tmp_path: Path
) -> None:
    from sqlalchemy import update

    from backend.errors import Invalid

    hp = {"max_steps": 4, "max_length": 64, "batch_size": 4, "learning_rate": 3e-2, "seed": 0}
    job_id = sft_job(seed, pretrained, "prompt_tuning", hyperparameters=hp, method_config={"num_virtual_tokens": 4})
    assert run_job(job_id) == "succeeded"
    export_id = queue_export(seed, job_id, format="adapter", dtype="float32")
    assert worker.export_weights(export_id) == "done", row(export_id).error
    out = unzip(seed, row(export_id), tmp_path / "adapter")
    original = seed.data_dir / "jobs" / str(job_id) / "adapter"
    exported = load_file(out / "adapter_model.safetensors")
    assert set(exported) == {"prompt_embeddings"}
    assert torch.equal(
        exported["prompt_embeddings"], load_file(original / "adapter_model.safetensors")["prompt_embeddings"]
    )
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(pretrained.model_path), out)
    assert (
        logits(model, out)
        - logits(PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(pretrained.model_path), original), out)
    ).abs().max().item() == 0

    # The API refuses a merged export, naming the field; a row that asks for one anyway fails on the worker
    # instead of shipping the bare base as "merged".
    with pytest.raises(Invalid) as refused:
        queue_export(seed, job_id, format="merged", dtype="float32")
    assert refused.value.details == {"field": "format"} and "prompt tuning" in refused.value.message
    sneaked = queue_export(seed, job_id, format="adapter", dtype="float16")
    with session_scope() as s:
        s.execute(update(Export).where(Export.id == sneaked).values(format="merged"))
    assert worker.export_weights(sneaked) == "failed"
    assert "cannot be merged" in (row(sneaked).error or "")
