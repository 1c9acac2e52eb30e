"""LoRA SFT through the studio against a plain Hugging Face `Trainer`, in one run on this machine.

Set-up (issue 14): the `small` preset pretrained briefly on the alpaca texts, then LoRA SFT on 600 alpaca records,
40 steps x batch 8 x max_length 256. The baseline is what a person would write by hand: the same tokenized
examples (prompt masked) as the studio run it faces (the same training split: 90% of the records for the
defaults, all of them for a run with evaluations off), `DataCollatorForSeq2Seq` padding each batch to its longest
example, the same LoRA settings, learning rate, batch, steps and seed, evaluation off; it runs just before the
studio runs it is compared with. The studio runs as a worker runs a
job (`workers.tasks.run_job` on a job row), three ways: its defaults (packing, evaluations within eval_budget,
the final one on the whole held-out set), evaluations off (validation_fraction 0), and packing and evaluations
off. Figure: supervised tokens (response tokens carrying loss) per wall second of training, measured around the
training loop and its evaluations (`workers.training.train` in the studio, `Trainer.train` in the baseline):
data preparation, model loading and export are outside both. Prints BENCH lines and writes
tests/bench/results/sft.json. Needs ../shared/datasets (skipped otherwise).

Environment: BENCH_SFT_STEPS (40), BENCH_SFT_RECORDS (600), BENCH_SFT_PRETRAIN_STEPS (60).
"""

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import LoraConfig, get_peft_model
from sqlalchemy import select
from transformers import AutoModelForCausalLM, DataCollatorForSeq2Seq, PrinterCallback, Trainer, TrainingArguments

from backend.db import Job, JobEvent, JobMetric, Model, session_scope
from backend.method.settings import LoraSettings
from backend.migrate import upgrade
from tests.bench.support import write_result
from tests.support import stored
from tests.workers.support import Seed, add_dataset, add_user, create_job, studio_env
from workers import training
from workers.data import split_holdout
from workers.examples import build_sft_examples, load_tokenizer
from workers.tasks import run_job

SHARED = Path(__file__).resolve().parents[3] / "shared" / "datasets"
ALPACA = SHARED / "instruct" / "alpaca_en_demo.json"
STEPS = int(os.environ.get("BENCH_SFT_STEPS", "40"))
RECORDS = int(os.environ.get("BENCH_SFT_RECORDS", "600"))
PRETRAIN_STEPS = int(os.environ.get("BENCH_SFT_PRETRAIN_STEPS", "60"))
HP: dict[str, Any] = {
    "max_steps": STEPS,
    "batch_size": 8,
    "max_length": 256,
    "learning_rate": 2e-4,
    "logging_steps": 1,
    "seed": 0,
    "validation_fraction": 0.1,
}


def canonical(record: dict[str, str]) -> dict[str, str]:
    prompt = record["instruction"] + (f"\n\n{record['input']}" if record.get("input") else "")
    return {"prompt": prompt, "completion": record["output"]}


@pytest.fixture(scope="module")
def studio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A migrated database, the alpaca records and the `small` preset pretrained briefly on their text."""
    if not ALPACA.exists():
        pytest.skip("../shared/datasets not present")
    data_dir = tmp_path_factory.mktemp("sft-bench")
    records = json.loads(ALPACA.read_text())
    corpus = data_dir / "alpaca_text.txt"
    corpus.write_text("\n\n".join(r["instruction"] + "\n" + r.get("input", "") + "\n" + r["output"] for r in records))
    subset = data_dir / "alpaca_600.jsonl"
    subset.write_text("".join(json.dumps(canonical(r)) + "\n" for r in records[:RECORDS]))
    with studio_env(data_dir):
        upgrade()
        user_id = add_user("bench@example.com")
        seed = Seed(data_dir, user_id, add_dataset(user_id, corpus), add_dataset(user_id, subset))
        job_id = create_job(
            seed,
            kind="pretrain",
            architecture="small",
            hyperparameters={"max_steps": PRETRAIN_STEPS, "max_length": 256, "batch_size": 8, "learning_rate": 1e-3},
        )
        assert run_job(job_id) == "succeeded"
        with session_scope() as s:
            model = s.scalars(select(Model).where(Model.job_id == job_id)).one()
            base_id, base_path = model.id, stored(model.path)
        yield {
            "seed": seed,
            "dataset_id": seed.alpaca_dataset_id,
            "base_id": base_id,
            "base_path": base_path,
            "records": [canonical(r) for r in records[:RECORDS]],
        }


def studio_run(studio: dict[str, Any], **hp: Any) -> dict[str, Any]:
    """One studio job; the seconds its training loop and evaluations took, and what it logged."""
    timed: dict[str, float] = {}
    original = training.train

    def timed_train(*args: Any, **kwargs: Any) -> None:
        began = time.perf_counter()
        try:
            original(*args, **kwargs)
        finally:
            timed["seconds"] = time.perf_counter() - began

    job_id = create_job(
        studio["seed"],
        kind="finetune",
        method="lora",
        objective="sft",
        dataset_id=studio["dataset_id"],
        base_model_id=studio["base_id"],
        hyperparameters={**HP, **hp},
    )
    with pytest.MonkeyPatch.context() as mp:
        # The recipe imported `train` by name: patch it where the recipe looks it up.
        mp.setattr("workers.recipes.finetune.train", timed_train)
        assert run_job(job_id) == "succeeded"
    with session_scope() as s:
        points = [m.values for m in s.scalars(select(JobMetric).where(JobMetric.job_id == job_id))]
        events = [e.message for e in s.scalars(select(JobEvent).where(JobEvent.job_id == job_id))]
        job = s.get(Job, job_id)
        assert job is not None
        eval_loss = job.final_eval_loss
    steps = [p for p in points if "loss" in p]
    mfu = [p["mfu"] for p in steps[2:] if "mfu" in p]
    return {
        "seconds": timed["seconds"],
        "supervised_tokens": steps[-1]["supervised_tokens"],
        "evaluations": sum("eval_loss" in p for p in points),
        "final_eval_loss": eval_loss,
        "mfu": sum(mfu) / len(mfu) if mfu else None,
        "notes": [e for e in events if e.startswith(("packing", "evaluating", "watch"))],
    }


class CountingCollator(DataCollatorForSeq2Seq):
    """DataCollatorForSeq2Seq that also counts the supervised tokens it hands the Trainer."""

    supervised = 0

    def __call__(self, features: list[dict[str, Any]], return_tensors: str | None = None) -> dict[str, Any]:
        batch = super().__call__(features, return_tensors)
        self.supervised += int((batch["labels"][:, 1:] != -100).sum())
        return batch


def plain_trainer_run(studio: dict[str, Any], tmp: Path, validation_fraction: float) -> dict[str, Any]:
    """The hand-written baseline on the same examples (the studio run's training split), model and settings."""
    torch.manual_seed(HP["seed"])
    tokenizer = load_tokenizer(studio["base_path"])
    examples, _ = build_sft_examples(tokenizer, studio["records"], HP["max_length"])
    train_set, _ = split_holdout(examples, validation_fraction, HP["seed"])
    base = AutoModelForCausalLM.from_pretrained(studio["base_path"])
    # The studio's default LoRA settings, as the job uses them.
    lora = LoraConfig(**LoraSettings().peft_kwargs(str(studio["base_path"])), task_type="CAUSAL_LM")
    model = get_peft_model(base, lora)
    collator = CountingCollator(tokenizer, padding="longest", label_pad_token_id=-100)
    args = TrainingArguments(
        output_dir=str(tmp / "plain"),
        max_steps=HP["max_steps"],
        per_device_train_batch_size=HP["batch_size"],
        learning_rate=HP["learning_rate"],
        lr_scheduler_type="linear",
        logging_steps=HP["logging_steps"],
        eval_strategy="no",
        save_strategy="no",
        seed=HP["seed"],
        use_cpu=not torch.cuda.is_available(),
        report_to="none",
        disable_tqdm=True,
        remove_unused_columns=False,
    )
    trainer = Trainer(model=model, args=args, train_dataset=train_set, data_collator=collator)
    trainer.remove_callback(PrinterCallback)
    began = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - began
    return {"seconds": seconds, "supervised_tokens": collator.supervised}


def test_sft_against_a_plain_trainer(studio: dict[str, Any], tmp_path: Path) -> None:
    # Each studio run faces a plain Trainer on its own training examples (the defaults hold 10% out, a run with
    # evaluations off trains on every record), run just before it: the machine's speed drifts over minutes.
    runs: list[tuple[str, str, dict[str, Any]]] = [
        ("studio defaults", "plain Trainer, 90% of the records", {}),
        ("studio, evaluations off", "plain Trainer, every record", {"validation_fraction": 0.0}),
        ("studio, packing and evaluations off", "plain Trainer, every record", {"validation_fraction": 0.0,
                                                                                 "packing": False}),
    ]  # fmt: skip
    rows: dict[str, dict[str, Any]] = {}
    for name, baseline, hp in runs:
        if baseline not in rows:
            fraction = hp.get("validation_fraction", HP["validation_fraction"])
            rows[baseline] = plain_trainer_run(studio, tmp_path, fraction)
        rows[name] = {**studio_run(studio, **hp), "baseline": baseline}
    print()
    figures: dict[str, dict[str, Any]] = {}
    for name, row in rows.items():
        rate = row["supervised_tokens"] / row["seconds"]
        base = rows[row.get("baseline", name)]
        ratio = rate / (base["supervised_tokens"] / base["seconds"])
        figures[name] = {**row, "supervised_tokens_per_second": rate, "vs_plain_trainer": ratio}
        extra = f", {row['evaluations']} evaluations" if "evaluations" in row else ""
        extra += f", MFU {row['mfu']:.0%}" if row.get("mfu") is not None else ""
        print(
            f"BENCH sft {name}: {row['supervised_tokens']:,.0f} supervised tokens in {row['seconds']:.1f} s = "
            f"{rate:,.0f}/s ({ratio:.2f}x the {row.get('baseline', 'baseline itself')}){extra}"
        )
    off = figures["studio, evaluations off"]["supervised_tokens_per_second"]
    default = figures["studio defaults"]["supervised_tokens_per_second"]
    print(f"BENCH sft evaluation cost: defaults run at {default / off:.2f}x the speed of evaluations off")
    for note in rows["studio defaults"]["notes"]:
        print(f"  {note}")
    write_result(
        "sft",
        {
            "device": training.device_description(),
            "settings": HP,
            "runs": figures,
            "defaults_vs_evaluations_off": default / off,
        },
    )
    # The studio must not trail the baseline it is measured against (the targets live in the README).
    assert figures["studio, evaluations off"]["vs_plain_trainer"] > 1.0
