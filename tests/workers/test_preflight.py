"""The pre-flight check: a run whose data cannot give a meaningful result fails before its first step, saying what
to change; the dry run's statistics carry the same check, so the estimate finds the same problems."""

import json
from pathlib import Path

from sqlalchemy import func, select

from backend.db import JobMetric, session_scope
from backend.job.preflight import DataCheck, problems
from tests.workers.support import Pretrained, Seed, add_dataset, create_job, get_job, messages, studio_env
from workers.analysis.tokens import token_stats
from workers.examples import load_tokenizer
from workers.tasks import run_job

LONG = " ".join(["The owl watched the quiet field while the fox slept in the tall grass."] * 12)


def write_jsonl(path: Path, records: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def metric_count(job_id: int) -> int:
    with session_scope() as s:
        return int(s.scalar(select(func.count()).select_from(JobMetric).where(JobMetric.job_id == job_id)) or 0)


def failed_before_first_step(job_id: int) -> str:
    job = get_job(job_id)
    assert job.status == "failed", messages(job_id)
    assert metric_count(job_id) == 0  # not one training step was taken
    assert job.error
    return job.error


def test_the_advice_names_the_max_length_that_keeps_enough() -> None:
    check = DataCheck(unit="pairs", total=25, kept=4, max_length=256, keep_at=[(512, 12), (1024, 23), (2048, 25)])
    (problem,) = problems(check, min_kept_fraction=0.9)
    assert problem.field == "max_length"
    assert problem.message == (
        "only 4 of 25 pairs fit in max_length=256: raise it to 1024 to keep 23, or lower min_kept_fraction (now 0.9)"
    )
    assert problems(check, min_kept_fraction=0.1) == []


def test_each_meaningless_run_is_named() -> None:
    weightless = DataCheck(total=5, kept=0, max_length=64, supervised_tokens=0, untrainable=5)
    assert "carries loss" in problems(weightless, min_kept_fraction=0.9)[0].message
    same = DataCheck(unit="pairs", total=3, kept=3, max_length=64, supervised_tokens=9, identical_pairs=3)
    assert "nothing to prefer" in problems(same, min_kept_fraction=0.9)[0].message
    lonely = DataCheck(total=5, kept=5, max_length=64, classes={"pos": 4, "neg": 1})
    assert "class 'neg' has 1 example" in problems(lonely, min_kept_fraction=0.9)[0].message
    nothing_fits = DataCheck(total=4, kept=0, max_length=64, supervised_tokens=0)
    assert problems(nothing_fits, min_kept_fraction=0)[0].field == "max_length"  # never "meaningful" with 0 kept
    unevaluated = DataCheck(total=1, kept=1, max_length=64, supervised_tokens=3, validation=0)
    (problem,) = problems(unevaluated, min_kept_fraction=0.9)
    assert problem.field == "validation_fraction" and "validation set is empty" in problem.message


def test_dpo_with_prompts_longer_than_max_length_fails_before_its_first_step(
    seed: Seed, pretrained: Pretrained, tmp_path: Path
) -> None:
    pairs = [
        {"prompt": LONG if i < 20 else f"Tell me about animal {i}.", "chosen": "The owl.", "rejected": "A rock."}
        for i in range(25)
    ]
    with studio_env(seed.data_dir):
        dataset = add_dataset(seed.user_id, write_jsonl(tmp_path / "long_pairs.jsonl", pairs))
        job_id = create_job(
            seed,
            kind="finetune",
            method="lora",
            objective="dpo",
            dataset_id=dataset,
            base_model_id=pretrained.model_id,
            hyperparameters={"max_steps": 4, "max_length": 64, "batch_size": 4, "validation_fraction": 0.2},
        )
        assert run_job(job_id) == "failed"
        error = failed_before_first_step(job_id)
        assert error.startswith("only 5 of 25 pairs fit in max_length=64: raise it to 512 to keep 25"), error
        assert any(m.startswith("pre-flight: only 5 of 25 pairs") for m in messages(job_id))

        # The dry run finds the very same numbers before launch.
        tokenizer = load_tokenizer(pretrained.model_path)
        stats = token_stats(tokenizer, pairs, objective="dpo", max_length=64, batch_size=4)
        check = DataCheck.model_validate(stats["preflight"])
        assert (check.total, check.kept) == (25, 5) and stats["dropped_records"] == 20
        assert problems(check, min_kept_fraction=0.9)[0].message == error


def test_sft_where_no_answer_carries_loss_fails(seed: Seed, pretrained: Pretrained, tmp_path: Path) -> None:
    conversations = [
        {"messages": [{"role": "user", "content": f"Hi {i}"}, {"role": "assistant", "content": "Hello", "weight": 0}]}
        for i in range(6)
    ]
    with studio_env(seed.data_dir):
        dataset = add_dataset(seed.user_id, write_jsonl(tmp_path / "weightless.jsonl", conversations))
        job_id = create_job(
            seed,
            kind="finetune",
            method="lora",
            objective="sft",
            dataset_id=dataset,
            base_model_id=pretrained.model_id,
            hyperparameters={"max_steps": 2, "max_length": 64, "batch_size": 2},
        )
        assert run_job(job_id) == "failed"
        error = failed_before_first_step(job_id)
        assert error.startswith("no token of the 6 records carries loss"), error


def test_classification_with_a_class_of_one_example_fails(seed: Seed, pretrained: Pretrained, tmp_path: Path) -> None:
    texts = [{"text": f"a happy day number {i}", "label": "pos"} for i in range(6)]
    texts += [{"text": f"a sad day number {i}", "label": "neg"} for i in range(5)]
    texts.append({"text": "a strange day", "label": "odd"})
    with studio_env(seed.data_dir):
        dataset = add_dataset(seed.user_id, write_jsonl(tmp_path / "classes.jsonl", texts))
        job_id = create_job(
            seed,
            kind="finetune",
            method="lora",
            objective="classification",
            dataset_id=dataset,
            base_model_id=pretrained.model_id,
            hyperparameters={"max_steps": 2, "max_length": 32, "batch_size": 2},
        )
        assert run_job(job_id) == "failed"
        assert "class 'odd' has 1 example" in failed_before_first_step(job_id)


def test_an_empty_validation_set_fails(seed: Seed, pretrained: Pretrained, tmp_path: Path) -> None:
    rows = [{"prompt": "Name a bird.", "completion": "The owl."}]
    with studio_env(seed.data_dir):
        dataset = add_dataset(seed.user_id, write_jsonl(tmp_path / "one.jsonl", rows))
        job_id = create_job(
            seed,
            kind="finetune",
            method="lora",
            objective="sft",
            dataset_id=dataset,
            base_model_id=pretrained.model_id,
            hyperparameters={"max_steps": 2, "max_length": 64, "batch_size": 1, "validation_fraction": 0.1},
        )
        assert run_job(job_id) == "failed"
        error = failed_before_first_step(job_id)
        assert "the validation set is empty (1 record after the cut: too few to hold some out)" in error


def test_the_kto_dry_run_keeps_what_the_recipe_keeps(pretrained: Pretrained) -> None:
    """A rated answer is kept when the *final* answer starts within max_length, not any earlier assistant turn."""
    from workers.recipes.kto import unpaired_example

    tokenizer = load_tokenizer(pretrained.model_path)
    turns = [{"role": "user", "content": "Hi."}, {"role": "assistant", "content": "Hello there."}]
    asks = [{"role": "user", "content": LONG if i % 2 else "Name a bird."} for i in range(6)]
    records = [{"prompt": [*turns, ask], "completion": "The owl.", "label": i % 3 == 0} for i, ask in enumerate(asks)]
    stats = token_stats(tokenizer, records, objective="kto", max_length=160, batch_size=2)
    check = DataCheck.model_validate(stats["preflight"])
    kept = sum(unpaired_example(tokenizer, r, 160)[0] is not None for r in records)
    assert (check.total, check.kept) == (6, kept) == (6, 3)
    assert problems(check, min_kept_fraction=0.9)[0].message.startswith("only 3 of 6 records fit in max_length=160")
