"""The official `openai` SDK against a live studio (/v1): files, supervised and DPO jobs on a tiny model followed
through their events to `succeeded`, checkpoints, chat with the fine-tuned model (plain and streamed), pause,
resume, cancel, and errors in OpenAI's shape.

On the embedded studio (SQLite) in the default run; the same tests on PostgreSQL + Redis are `slow`."""

import io
import json
import time
import zipfile
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI

from tests.support import StudioProcess

pytestmark = pytest.mark.parametrize(
    "shared_studio", ["sqlite", pytest.param("postgres", marks=pytest.mark.slow)], indirect=True
)

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
QUESTIONS = ["What is the capital of France?", "Name a primary colour.", "Say hello.", "Count to three."]
ANSWERS = ["Paris.", "Red.", "Hello!", "One, two, three."]
ENDED = ("succeeded", "failed", "cancelled")


@pytest.fixture(scope="module")
def model_zip(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A 1-layer Llama and a byte-level BPE tokenizer with a ChatML template, zipped as the Models page takes it."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(0)  # the same random weights every run: the greedy answers below are reproducible
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel()
    corpus = [*QUESTIONS, *ANSWERS, "user assistant system"] * 20
    specials = ["<eos>", "<pad>", "<|im_start|>", "<|im_end|>"]
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=400, special_tokens=specials))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>")
    fast.chat_template = CHATML
    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=256,
    )
    out = tmp_path_factory.mktemp("tiny") / "tiny-chat"
    LlamaForCausalLM(config).save_pretrained(out)
    fast.save_pretrained(out)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for file in sorted(out.iterdir()):
            zf.write(file, file.name)
    return buffer.getvalue()


def sdk(studio: StudioProcess, **options: Any) -> OpenAI:
    # max_retries=0: a 5xx must fail the test, not be asked again.
    return OpenAI(base_url=f"{studio.url}/v1", api_key=studio.token, max_retries=0, timeout=120, **options)


def base_model(studio: StudioProcess, model_zip: bytes) -> str:
    with studio.client() as client:
        res = client.post("/api/models", files={"file": ("tiny-chat.zip", model_zip)}, data={"name": "tiny-chat"})
    assert res.status_code == 201, res.text
    return f"studio-model-{res.json()['id']}"


def chat_lines(n: int) -> bytes:
    rows = [
        {"messages": [{"role": "user", "content": QUESTIONS[i % 4]}, {"role": "assistant", "content": ANSWERS[i % 4]}]}
        for i in range(n)
    ]
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def dpo_lines(n: int) -> bytes:
    rows = [
        {
            "input": {"messages": [{"role": "user", "content": QUESTIONS[i % 4]}]},
            "preferred_output": [{"role": "assistant", "content": ANSWERS[i % 4]}],
            "non_preferred_output": [{"role": "assistant", "content": ANSWERS[(i + 1) % 4]}],
        }
        for i in range(n)
    ]
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def follow(client: OpenAI, job_id: str, statuses: tuple[str, ...] = ENDED, timeout: float = 240) -> Any:
    """Poll the job (and read its events, as a script following a job does) until its status is in `statuses`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.fine_tuning.jobs.retrieve(job_id)
        client.fine_tuning.jobs.list_events(job_id, limit=5)
        if job.status in statuses:
            return job
        time.sleep(0.5)
    events = [e.message for e in client.fine_tuning.jobs.list_events(job_id, limit=50).data]
    raise TimeoutError(f"{job_id} stuck in {job.status}: {events}")


def test_supervised_job_events_checkpoints_and_chat(shared_studio: StudioProcess, model_zip: bytes) -> None:
    client = sdk(shared_studio)
    base = base_model(shared_studio, model_zip)
    assert base in [m.id for m in client.models.list()]

    data = chat_lines(16)
    uploaded = client.files.create(file=("chat.jsonl", data), purpose="fine-tune")
    assert (uploaded.object, uploaded.bytes, uploaded.filename, uploaded.status) == (
        "file",
        len(data),
        "chat.jsonl",
        "processed",
    )
    assert client.files.retrieve(uploaded.id).id == uploaded.id
    assert client.files.content(uploaded.id).content == data
    assert [f.id for f in client.files.list()] == [uploaded.id]

    job = client.fine_tuning.jobs.create(
        model=base,
        training_file=uploaded.id,
        suffix="tiny",
        seed=7,
        metadata={"run": "sdk"},
        method={
            "type": "supervised",
            "supervised": {"hyperparameters": {"n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 10}},
        },
    )
    assert job.id.startswith("ftjob-") and job.status in ("queued", "running")
    assert (job.seed, job.metadata, job.training_file) == (7, {"run": "sdk"}, uploaded.id)
    assert job.method.type == "supervised"
    hp = job.method.supervised.hyperparameters
    assert (hp.n_epochs, hp.batch_size, hp.learning_rate_multiplier) == (2, 4, 10)

    done = follow(client, job.id)
    assert done.status == "succeeded", done.error
    assert done.fine_tuned_model == f"ft:{base}:tiny:{job.id}"
    assert done.trained_tokens and done.trained_tokens > 0
    assert done.finished_at and done.finished_at >= done.created_at

    # Events: log lines and logged points, newest first, paged with `after` without a gap or an overlap.
    events = client.fine_tuning.jobs.list_events(job.id, limit=100).data
    kinds = {e.type for e in events}
    assert kinds == {"message", "metrics"}, kinds
    assert [e.created_at for e in events] == sorted((e.created_at for e in events), reverse=True)
    metrics = [e for e in events if e.type == "metrics" and "train_loss" in (e.data or {})]
    assert metrics and all(e.data["step"] >= 1 for e in metrics)
    first = client.fine_tuning.jobs.list_events(job.id, limit=3)
    second = client.fine_tuning.jobs.list_events(job.id, limit=3, after=first.data[-1].id)
    assert first.has_more and [e.id for e in first.data + second.data] == [e.id for e in events[:6]]

    # The results file: OpenAI's step_metrics.csv.
    csv = client.files.content(done.result_files[0]).text.splitlines()
    assert csv[0] == "step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy"
    assert len(csv) > 1 and csv[-1].split(",")[0] == str(max(e.data["step"] for e in metrics))

    # A checkpoint at the end of each epoch (OpenAI's rule), each a model of its own.
    checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert checkpoints and checkpoints[0].fine_tuned_model_checkpoint.startswith(f"{done.fine_tuned_model}:ckpt-step-")
    assert [c.step_number for c in checkpoints] == sorted((c.step_number for c in checkpoints), reverse=True)
    with shared_studio.client() as studio:
        settings = studio.get(f"/api/jobs/{job.id.removeprefix('ftjob-')}").json()["hyperparameters"]
    # Through the studio's schema: one checkpoint per epoch's steps, the last three epochs' kept (here both).
    assert settings["keep_checkpoints"] == 2 and settings["checkpoint_steps"] >= 1

    messages = [{"role": "user", "content": QUESTIONS[0]}]
    answer = client.chat.completions.create(model=done.fine_tuned_model, messages=messages, max_tokens=6, temperature=0)
    choice = answer.choices[0]
    assert answer.object == "chat.completion" and choice.message.role == "assistant"
    assert isinstance(choice.message.content, str) and choice.finish_reason in ("stop", "length")
    assert 1 <= answer.usage.completion_tokens <= 6 and answer.usage.prompt_tokens > 3
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + answer.usage.completion_tokens

    # Streamed: the same greedy answer in chunks, then the usage chunk.
    stream = client.chat.completions.create(
        model=done.fine_tuned_model,
        messages=messages,
        max_tokens=6,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == choice.message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == choice.finish_reason
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == answer.usage.completion_tokens

    # A whole conversation reaches the model: its prompt is longer than its last question's alone.
    conversation = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": QUESTIONS[1]},
        {"role": "assistant", "content": ANSWERS[1]},
        {"role": "user", "content": QUESTIONS[2]},
    ]
    ask = {"model": done.fine_tuned_model, "max_tokens": 2, "temperature": 0}
    last = client.chat.completions.create(messages=conversation[-1:], **ask)  # type: ignore[call-overload]
    whole = client.chat.completions.create(messages=conversation, **ask)  # type: ignore[call-overload]
    assert whole.usage.prompt_tokens > last.usage.prompt_tokens + 10
    # Tool definitions go to the template too.
    weather = {"name": "weather", "description": "Today's weather", "parameters": {"type": "object", "properties": {}}}
    tooled = client.chat.completions.create(
        messages=conversation[-1:], tools=[{"type": "function", "function": weather}], **ask
    )  # type: ignore[call-overload]
    assert tooled.usage.prompt_tokens > last.usage.prompt_tokens + 10
    assert tooled.choices[0].finish_reason in ("stop", "length", "tool_calls")

    by_checkpoint = client.chat.completions.create(
        model=checkpoints[-1].fine_tuned_model_checkpoint, messages=messages, max_tokens=3, temperature=0
    )
    assert by_checkpoint.choices[0].message.role == "assistant"
    completion = client.completions.create(model=base, prompt="What is", max_tokens=8, temperature=0)
    text = completion.choices[0].text
    assert completion.object == "text_completion" and completion.usage.completion_tokens <= 8
    # A stop sequence taken from that greedy answer: the worker stops there and the answer ends before it.
    assert len(text) >= 4, text
    stop = text[2:4]
    stopped = client.completions.create(model=base, prompt="What is", max_tokens=8, temperature=0, stop=[stop])
    assert (stopped.choices[0].text, stopped.choices[0].finish_reason) == (text[: text.find(stop)], "stop")

    assert job.id in [j.id for j in client.fine_tuning.jobs.list(metadata={"run": "sdk"})]
    assert job.id not in [j.id for j in client.fine_tuning.jobs.list(metadata={"run": "other"})]
    assert done.fine_tuned_model in [m.id for m in client.models.list()]
    assert client.models.retrieve(done.fine_tuned_model).id == done.fine_tuned_model
    assert client.models.delete(done.fine_tuned_model).deleted
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve(done.fine_tuned_model)


def test_dpo_job(shared_studio: StudioProcess, model_zip: bytes) -> None:
    client = sdk(shared_studio)
    base = base_model(shared_studio, model_zip)
    pairs = client.files.create(file=("pairs.jsonl", dpo_lines(8)), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        model=base,
        training_file=pairs.id,
        method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.2, "batch_size": 4, "n_epochs": 1}}},
    )
    done = follow(client, job.id)
    assert done.status == "succeeded", done.error
    assert done.method.type == "dpo" and done.method.dpo.hyperparameters.beta == 0.2
    assert done.fine_tuned_model == f"ft:{base}::{job.id}"  # no suffix
    events = client.fine_tuning.jobs.list_events(job.id, limit=100).data
    losses = [e.data["train_loss"] for e in events if e.type == "metrics" and "train_loss" in e.data]
    assert losses  # DPO's loss starts at ln 2 on a fresh policy
    # A preference file trains DPO, not supervised fine-tuning: refused naming the parameter.
    with pytest.raises(openai.BadRequestError) as refused:
        client.fine_tuning.jobs.create(model=base, training_file=pairs.id)
    assert refused.value.body["param"] == "method.type"  # type: ignore[index]


def test_pause_resume_cancel(shared_studio: StudioProcess, model_zip: bytes) -> None:
    client = sdk(shared_studio)
    base = base_model(shared_studio, model_zip)
    file = client.files.create(file=("long.jsonl", chat_lines(64)), purpose="fine-tune")
    hp = {"n_epochs": 50, "batch_size": 2}
    job = client.fine_tuning.jobs.create(model=base, training_file=file.id, hyperparameters=hp)  # the legacy place
    assert job.hyperparameters.n_epochs == 50
    follow(client, job.id, ("running", *ENDED))
    paused = wait_for(lambda: _try_pause(client, job.id))
    assert paused.status in ("running", "paused")
    assert follow(client, job.id, ("paused", *ENDED)).status == "paused"
    paused_at = client.fine_tuning.jobs.checkpoints.list(job.id).data[0].step_number
    resumed = client.fine_tuning.jobs.resume(job.id)
    assert resumed.status in ("queued", "running")
    # Training goes on past the pause's checkpoint: a point logged at a later step.
    wait_for(lambda: _step_after(client, job.id, paused_at), timeout=120)
    cancelled = client.fine_tuning.jobs.cancel(job.id)
    assert cancelled.id == job.id
    assert follow(client, job.id).status == "cancelled"
    messages = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=100).data]
    assert f"resuming from checkpoint-{paused_at}" in messages, messages
    # A file a job trained on stays while the job does.
    with pytest.raises(openai.ConflictError):
        client.files.delete(file.id)


def _try_pause(client: OpenAI, job_id: str) -> Any:
    """Pause once the job is running (a job claimed but not yet at its first step is not pausable yet)."""
    try:
        return client.fine_tuning.jobs.pause(job_id)
    except openai.ConflictError:
        return None


def _step_after(client: OpenAI, job_id: str, step: int) -> bool | None:
    events = client.fine_tuning.jobs.list_events(job_id, limit=20).data
    return any(e.type == "metrics" and e.data["step"] > step for e in events) or None


def wait_for(attempt: Any, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (result := attempt()) is not None:
            return result
        time.sleep(0.3)
    raise TimeoutError("never happened")


def test_errors_in_openai_shape(shared_studio: StudioProcess, model_zip: bytes, tmp_path: Path) -> None:
    client = sdk(shared_studio)
    with pytest.raises(openai.NotFoundError) as missing:
        client.files.retrieve("file-999999999")
    assert missing.value.status_code == 404
    assert set(missing.value.body) == {"message", "type", "param", "code"}  # type: ignore[arg-type]

    base = base_model(shared_studio, model_zip)
    file = client.files.create(file=("chat.jsonl", chat_lines(4)), purpose="fine-tune")
    bad = {"type": "supervised", "supervised": {"hyperparameters": {"learning_rate_multiplier": -1}}}
    with pytest.raises(openai.BadRequestError) as refused:
        client.fine_tuning.jobs.create(model=base, training_file=file.id, method=bad)  # type: ignore[arg-type]
    assert refused.value.body["param"] == "method.supervised.hyperparameters.learning_rate_multiplier"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as refused:
        client.fine_tuning.jobs.create(model=base, training_file="file-999999999")
    assert refused.value.body["param"] == "training_file"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as refused:
        client.fine_tuning.jobs.create(model="gpt-4o-mini-2024-07-18", training_file=file.id)
    assert refused.value.body["param"] == "model"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as refused:
        client.files.create(file=("chat.jsonl", chat_lines(2)), purpose="assistants")
    assert refused.value.body["param"] == "purpose"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as refused:
        client.files.create(file=("chat.jsonl", b'{"messages": [{"role": "robot"}]}\n'), purpose="fine-tune")
    assert refused.value.body["param"] == "file"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model=base, messages=[{"role": "user", "content": "hi"}], n=2)
    assert refused.value.body["param"] == "n"  # type: ignore[index]
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="ft:nope:x:ftjob-999999", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.NotFoundError):
        client.fine_tuning.jobs.retrieve("ftjob-999999999")
    with pytest.raises(openai.AuthenticationError) as denied:
        sdk(shared_studio, default_headers={"Authorization": "Bearer wrong"}).models.list()
    assert denied.value.body["code"] == "invalid_api_key"  # type: ignore[index]
    res = httpx.get(f"{shared_studio.url}/v1/no/such/thing", headers={"Authorization": f"Bearer {shared_studio.token}"})
    assert res.status_code == 404 and res.json()["error"]["type"] == "invalid_request_error"
