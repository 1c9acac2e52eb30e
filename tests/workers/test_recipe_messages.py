"""Fine-tuning on conversations (objective sft, shape messages): the masks the recipe trains with, the template
it ships with the adapter, and a separate validation dataset instead of a held-out fraction."""

from pathlib import Path

from sqlalchemy import select
from transformers import AutoTokenizer

from backend.db import Job, JobEvent, JobMetric, session_scope
from tests.workers.support import FIXTURES, Pretrained, Seed, add_dataset, create_job
from tests.workers.test_recipe_finetune import FINETUNE_HP, unzip_artifact
from workers.examples import CHATML_TEMPLATE
from workers.tasks import run_job


def test_lora_sft_on_messages_with_a_validation_dataset(seed: Seed, pretrained: Pretrained, tmp_path: Path) -> None:
    chats = add_dataset(seed.user_id, FIXTURES / "chat_messages.jsonl")
    held_out = add_dataset(seed.user_id, FIXTURES / "tasks_alpaca.json")
    job_id = create_job(
        seed,
        kind="finetune",
        method="lora",
        objective="sft",
        dataset_id=chats,
        validation_dataset_id=held_out,
        base_model_id=pretrained.model_id,
        hyperparameters={**FINETUNE_HP, "max_steps": 6, "max_length": 96, "eval_steps": 3},
    )
    assert run_job(job_id) == "succeeded"
    with session_scope() as s:
        job = s.get(Job, job_id)
        assert job is not None
        config = job.resolved_config
        metrics = list(s.scalars(select(JobMetric).where(JobMetric.job_id == job_id)))
        events = [e.message for e in s.scalars(select(JobEvent).where(JobEvent.job_id == job_id))]
    # All 16 conversations train; the 40 alpaca records of the validation file are the eval set.
    assert (config["train_examples"], config["eval_examples"]) == (16, 40), events
    assert config["validation_dataset"]["id"] == held_out
    assert any("eval_loss" in m.values for m in metrics)

    # The base has no chat template: the adapter's tokenizer carries the one the conversations were laid out in.
    unzip_artifact(job_id, "adapter.zip", tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    assert tokenizer.chat_template == CHATML_TEMPLATE
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True
    )
    assert prompt == "<|im_start|>user\nHi<|endoftext|>\n<|im_start|>assistant\n"
