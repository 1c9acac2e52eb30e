"""The /v1 translation without a worker: ids, OpenAI job bodies → studio job bodies, stop sequences, tool calls,
the streamed chunks, and errors in OpenAI's shape next to the studio's own (in-process, both backends)."""

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient

from backend.db import Dataset, Generation
from backend.openai_compat import ids, inference, streaming
from backend.openai_compat.errors import ApiError, validation_message
from backend.openai_compat.jobs import DEFAULT_BATCH_SIZE, DEFAULT_LEARNING_RATE, studio_body
from backend.openai_compat.schemas import ChatMessage, JobCreate


def test_ids_round_trip() -> None:
    assert ids.parse_file(ids.file_id(12)).dataset_id == 12
    assert ids.parse_file(ids.results_id(7)).results_of == 7
    assert ids.parse_job(ids.job_id(3)) == 3
    name = ids.fine_tuned_id("studio-model-2", "tiny", 9)
    assert name == "ft:studio-model-2:tiny:ftjob-9"
    assert ids.parse_model(name) == ids.ModelRef(job_id=9)
    assert ids.parse_model(ids.fine_tuned_id("studio-model-2", "", 9, 40)) == ids.ModelRef(job_id=9, step=40)
    assert ids.parse_model("studio-model-5") == ids.ModelRef(base_id=5)
    assert ids.parse_model("my model") == ids.ModelRef(name="my model")
    assert ids.parse_event("ftevent-m4") == ("metric", 4) and ids.parse_event("ftevent-4") == ("message", 4)
    with pytest.raises(ApiError) as missing:
        ids.parse_file("file-abc")
    assert (missing.value.status, missing.value.param) == (404, None)
    with pytest.raises(ApiError) as bad:
        ids.parse_job("nope", param="after", status=400)
    assert (bad.value.status, bad.value.param) == (400, "after")


def _dataset(dataset_id: int) -> Dataset:
    return Dataset(id=dataset_id, name="chat")


def test_auto_hyperparameters_take_the_studio_defaults() -> None:
    body = JobCreate.model_validate({"model": "m", "training_file": "file-1"})
    studio = studio_body(body, base_id=4, train=_dataset(1), valid=None)
    assert studio["hyperparameters"] == {
        "epochs": 1,
        "batch_size": DEFAULT_BATCH_SIZE,
        "learning_rate": DEFAULT_LEARNING_RATE,
        "seed": 42,
    }
    assert (studio["objective"], studio["method"], studio["objective_config"]) == ("sft", "lora", {})


def test_given_hyperparameters_dpo_and_the_legacy_place() -> None:
    dpo = {"type": "dpo", "dpo": {"hyperparameters": {"n_epochs": 3, "learning_rate_multiplier": 0.5, "beta": 0.3}}}
    body = JobCreate.model_validate({"model": "m", "training_file": "f", "suffix": "x", "seed": 9, "method": dpo})
    studio = studio_body(body, base_id=4, train=_dataset(1), valid=_dataset(2))
    assert studio["hyperparameters"]["epochs"] == 3 and studio["hyperparameters"]["seed"] == 9
    assert studio["hyperparameters"]["learning_rate"] == pytest.approx(DEFAULT_LEARNING_RATE * 0.5)
    assert (studio["objective"], studio["objective_config"], studio["validation_dataset_id"]) == (
        "dpo",
        {"beta": 0.3},
        2,
    )
    assert studio["name"] == "x"
    legacy = JobCreate.model_validate({"model": "m", "training_file": "f", "hyperparameters": {"batch_size": 2}})
    assert studio_body(legacy, base_id=4, train=_dataset(1), valid=None)["hyperparameters"]["batch_size"] == 2
    with pytest.raises(ValueError, match="give hyperparameters in method"):
        JobCreate.model_validate({"model": "m", "training_file": "f", "hyperparameters": {}, "method": dpo})


def test_a_refused_union_names_the_parameter_and_both_forms() -> None:
    errors = [
        {
            "loc": ("body", "method", "dpo", "hyperparameters", "beta", "literal['auto']"),
            "msg": "Input should be 'auto'",
        },
        {"loc": ("body", "method", "dpo", "hyperparameters", "beta", "constrained-float"), "msg": "must be > 0"},
        {"loc": ("body", "seed"), "msg": "too big"},
    ]
    message, param = validation_message(errors)
    assert param == "method.dpo.hyperparameters.beta"
    assert message == "method.dpo.hyperparameters.beta: Input should be 'auto' or must be > 0"
    assert validation_message([{"loc": ("body", "messages", 0, "role"), "msg": "bad"}])[1] == "messages[0].role"


def test_stop_sequences() -> None:
    assert inference.cut_at_stop("Hello STOP more END", ["END", "STOP"]) == ("Hello ", True)
    assert inference.cut_at_stop("Hello", ["STOP"]) == ("Hello", False)
    assert inference.held_back("Hello ST", ["STOP"]) == 2  # may be the start of STOP: not streamed yet
    assert inference.held_back("Hello", ["STOP"]) == 0


def _row(output: str, **params: Any) -> Generation:
    defaults = {"max_new_tokens": 8, "stop": [], "usage": {"prompt_tokens": 5, "completion_tokens": 3}}
    return Generation(id=1, output=output, params={**defaults, **params}, created_at=datetime.now(UTC), status="done")


def test_completion_views_finish_reasons_and_tool_calls() -> None:
    view = inference.chat_completion(_row("Paris. STOP x", stop=["STOP"]), "m")
    assert view["choices"][0]["message"]["content"] == "Paris. " and view["choices"][0]["finish_reason"] == "stop"
    assert view["usage"] == {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
    cut = inference.text_completion(_row("a b c", usage={"prompt_tokens": 2, "completion_tokens": 8}), "m")
    assert cut["choices"][0]["finish_reason"] == "length"
    tools = [{"type": "function", "function": {"name": "weather", "parameters": {}}}]
    call = '<tool_call>{"name": "weather", "arguments": {"city": "Paris"}}</tool_call>'
    message = inference.chat_completion(_row(call, tools=tools), "m")["choices"][0]
    assert message["finish_reason"] == "tool_calls" and message["message"]["content"] is None
    assert message["message"]["tool_calls"] == [
        {"id": "call_1_0", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Paris"}'}}
    ]


def _chunks(row: Generation, pieces: list[str], monkeypatch: pytest.MonkeyPatch, **options: Any) -> list[Any]:
    """What `stream` sends for a generation written in `pieces`, read back as JSON (None for [DONE])."""

    async def events(generation_id: int, offset: int, broadcaster: Any) -> AsyncIterator[dict[str, str]]:
        for piece in pieces:
            yield {"event": "token", "id": "0", "data": json.dumps({"text": piece})}
        yield {"event": "end", "id": "0", "data": json.dumps({"status": "done", "error": None})}

    monkeypatch.setattr(streaming, "generation_events", events)
    monkeypatch.setattr(streaming, "snapshot", lambda generation_id: row)

    async def collect() -> list[bytes]:
        return [c async for c in streaming.stream(row, model="m", broadcaster=None, **options)]  # type: ignore[arg-type]

    sent = asyncio.run(collect())
    assert all(c.startswith(b"data: ") and c.endswith(b"\n\n") for c in sent)
    return [None if c == b"data: [DONE]\n\n" else json.loads(c[6:]) for c in sent]


def test_streamed_chunks_hold_back_a_stop_sequence(monkeypatch: pytest.MonkeyPatch) -> None:
    pieces = ["Hel", "lo S", "TOP and more"]
    row = _row("".join(pieces), stop=["STOP"])
    chunks = _chunks(row, pieces, monkeypatch, chat=True, include_usage=True)
    assert chunks[-1] is None and chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    deltas = [c["choices"][0]["delta"].get("content") for c in chunks[1:-1] if c["choices"]]
    assert "".join(d for d in deltas if d) == "Hello " and "S" not in "".join(d for d in deltas if d)
    assert [c["choices"][0]["finish_reason"] for c in chunks[:-1] if c["choices"]][-1] == "stop"
    assert chunks[-2]["choices"] == [] and chunks[-2]["usage"]["total_tokens"] == 8
    assert {c["object"] for c in chunks[:-1]} == {"chat.completion.chunk"}


def test_streamed_tool_call_comes_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    call = '<tool_call>{"name": "weather", "arguments": {}}</tool_call>'
    tools = [{"type": "function", "function": {"name": "weather"}}]
    chunks = _chunks(_row(call, tools=tools), [call[:10], call[10:]], monkeypatch, chat=True, include_usage=False)
    calls = [c["choices"][0]["delta"]["tool_calls"] for c in chunks[:-1] if "tool_calls" in c["choices"][0]["delta"]]
    assert calls == [
        [{"index": 0, "id": "call_1_0", "type": "function", "function": {"name": "weather", "arguments": "{}"}}]
    ]
    assert not any(c["choices"][0]["delta"].get("content") for c in chunks[1:-1])
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"


def test_completion_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    chunks = _chunks(_row("one two"), ["one ", "two"], monkeypatch, chat=False, include_usage=False)
    assert "".join(c["choices"][0]["text"] for c in chunks[:-1]) == "one two"
    assert {c["object"] for c in chunks[:-1]} == {"text_completion"}


def test_errors_in_openai_shape_and_the_studios_own_unchanged(client: TestClient) -> None:
    token = client.headers.pop("Authorization")
    res = client.get("/v1/models")
    assert res.status_code == 401 and res.json()["error"]["code"] == "invalid_api_key"
    assert set(res.json()["error"]) == {"message", "type", "param", "code"}
    client.headers["Authorization"] = token
    assert client.get("/api/jobs/999").json() == {"detail": "job 999 not found"}  # /api keeps its shape
    assert client.get("/v1/fine_tuning/jobs/ftjob-999").json()["error"]["type"] == "invalid_request_error"
    unknown = client.post("/v1/embeddings", json={})
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "unknown_url"
    refused = client.post("/v1/fine_tuning/jobs", json={"model": "m", "training_file": "f", "seed": -1})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "seed"
    assert client.post("/v1/chat/completions", json={"model": "m"}).json()["error"]["param"] == "messages"


def test_files_are_datasets(client: TestClient) -> None:
    data = b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n'
    res = client.post("/v1/files", files={"file": ("chat.jsonl", data)}, data={"purpose": "fine-tune"})
    assert res.status_code == 200, res.text
    file = res.json()
    dataset = client.get(f"/api/datasets/{ids.parse_file(file['id']).dataset_id}").json()
    assert (dataset["shape"], dataset["size_bytes"], file["bytes"]) == ("messages", len(data), len(data))
    second = client.post("/v1/files", files={"file": ("b.jsonl", data)}, data={"purpose": "fine-tune"}).json()
    listed = client.get("/v1/files", params={"limit": 1}).json()
    assert ([f["id"] for f in listed["data"]], listed["has_more"]) == ([second["id"]], True)
    rest = client.get("/v1/files", params={"after": second["id"]}).json()
    assert ([f["id"] for f in rest["data"]], rest["has_more"]) == ([file["id"]], False)
    assert client.get(f"/v1/files/{file['id']}/content").content == data
    assert client.delete(f"/v1/files/{file['id']}").json() == {"object": "file", "id": file["id"], "deleted": True}
    assert client.get(f"/v1/files/{file['id']}").status_code == 404


def test_a_conversation_becomes_canonical_messages() -> None:
    given = [
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Weather in "}, {"type": "text", "text": "Paris?"}]},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "weather", "arguments": "{}"}}],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
    ]
    messages = inference.conversation([ChatMessage.model_validate(m) for m in given])
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "tool"]
    assert messages[1]["content"] == "Weather in Paris?" and messages[2]["content"] == ""
    assert messages[2]["tool_calls"][0]["function"]["name"] == "weather" and messages[3]["tool_call_id"] == "c1"
    image = {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}
    with pytest.raises(ApiError) as refused:
        inference.conversation([ChatMessage.model_validate(image)])
    assert refused.value.param == "messages[0].content[0]"
    with pytest.raises(ApiError) as refused:
        call = {"type": "function", "function": {"name": "weather", "arguments": "{}"}}
        inference.conversation([ChatMessage.model_validate({"role": "user", "content": "x", "tool_calls": [call]})])
    assert refused.value.param is not None and refused.value.param.startswith("messages[0]")  # checked as data is


def test_events_page_through_log_lines_and_points(client: TestClient) -> None:
    """Every event once, newest first, whatever event a page ends on (a log line or a point, at the same instant
    as another one too)."""
    from datetime import timedelta

    from backend.db import Job, JobEvent, JobMetric, Model, session_scope

    data = b'{"prompt": "q", "completion": "a"}\n'
    dataset_id = client.post("/api/datasets", files={"file": ("d.jsonl", data)}).json()["id"]
    owner_id = client.get("/api/me").json()["id"]
    start = datetime(2026, 12, 4, 8, 0, tzinfo=UTC)
    with session_scope() as s:
        model = Model(owner_id=owner_id, name="m", source="upload", path="/nowhere")
        s.add(model)
        s.flush()
        job = Job(
            owner_id=owner_id, name="j", kind="finetune", status="running", method="lora", objective="sft",
            dataset_id=dataset_id, base_model_id=model.id, hyperparameters={}, total_steps=6,
        )  # fmt: skip
        s.add(job)
        s.flush()
        for step in range(1, 7):
            at = start + timedelta(seconds=step)
            s.add(JobMetric(job_id=job.id, step=step, values={"loss": 1.0 / step}, created_at=at))
            if step % 2 == 0:  # a log line at the very instant of a point
                s.add(JobEvent(job_id=job.id, message=f"note {step}", created_at=at))
        job_id = f"ftjob-{job.id}"
    whole = client.get(f"/v1/fine_tuning/jobs/{job_id}/events", params={"limit": 100}).json()["data"]
    assert len(whole) == 9
    assert [e["message"] for e in whole[:3]] == ["note 6", "Step 6/6: train loss=0.1667", "Step 5/6: train loss=0.2000"]
    for size in (1, 2, 3, 4):
        seen, after = [], None
        while True:
            params: dict[str, Any] = {"limit": size} | ({"after": after} if after else {})
            page = client.get(f"/v1/fine_tuning/jobs/{job_id}/events", params=params).json()
            seen += [e["id"] for e in page["data"]]
            if not page["has_more"]:
                break
            after = page["data"][-1]["id"]
        assert seen == [e["id"] for e in whole], size
    refused = client.get(f"/v1/fine_tuning/jobs/{job_id}/events", params={"after": "ftevent-999999"})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "after"


def _job(client: TestClient, **fields: Any) -> tuple[int, int]:
    """(job id, base model id) of a job stored as a worker leaves one (no worker runs here)."""
    from backend.db import Job, Model, session_scope

    data = b'{"prompt": "q", "completion": "a"}\n'
    dataset_id = client.post("/api/datasets", files={"file": ("d.jsonl", data)}).json()["id"]
    owner_id = client.get("/api/me").json()["id"]
    with session_scope() as s:
        model = Model(owner_id=owner_id, name="m", source="upload", path="models/nowhere")
        s.add(model)
        s.flush()
        values = dict(
            owner_id=owner_id, name="j", kind="finetune", status="running", method="lora", objective="sft",
            dataset_id=dataset_id, base_model_id=model.id, hyperparameters={}, total_steps=6,
        )  # fmt: skip
        job = Job(**(values | fields))
        s.add(job)
        s.flush()
        return job.id, model.id


def _ask(client: TestClient, model_id: int, **options: Any) -> Any:
    body = {"model": f"studio-model-{model_id}", "messages": [{"role": "user", "content": "hi"}], **options}
    return client.post("/v1/chat/completions", json=body)


def _generations() -> list[Generation]:
    from sqlalchemy import select

    from backend.db import session_scope

    with session_scope() as s:
        return list(s.scalars(select(Generation)))


def test_no_inference_worker_is_a_503_before_any_generation(client: TestClient) -> None:
    _, model_id = _job(client)
    for stream in (False, True):
        res = _ask(client, model_id, stream=stream)
        assert res.status_code == 503, res.text
        assert res.headers["Retry-After"] == "10" and res.json()["error"]["code"] == "no_worker"
    assert _generations() == []  # nothing queued that no one would answer


def test_an_answer_not_ready_in_time_is_stopped(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    from backend.openai_compat import router
    from backend.queue import ANALYSIS_QUEUE
    from tests.api.live_workers import register_worker

    register_worker(ANALYSIS_QUEUE)  # live, but it never takes the task: the answer never comes
    monkeypatch.setattr(router, "WAIT_SECONDS", 0.5)
    _, model_id = _job(client)
    res = _ask(client, model_id)
    assert res.status_code == 504 and res.headers["x-should-retry"] == "false", res.text
    (row,) = _generations()
    assert row.status == "failed" and row.error is not None and "no answer within" in row.error


def test_a_failed_answer_is_not_retried(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    from backend.queue import ANALYSIS_QUEUE
    from tests.api.live_workers import register_worker

    register_worker(ANALYSIS_QUEUE)

    async def failed(generation_id: int, *args: Any, **kwargs: Any) -> Generation:
        return Generation(id=generation_id, status="failed", error="OSError: no weights in models/nowhere")

    monkeypatch.setattr(streaming, "finished", failed)
    res = _ask(client, _job(client)[1])
    assert res.status_code == 500 and res.headers["x-should-retry"] == "false"  # the SDK would only fail again
    assert res.json()["error"]["message"] == "OSError: no weights in models/nowhere"


def test_waiting_ends_when_the_client_leaves(monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    async def endless(generation_id: int, offset: int, broadcaster: Any) -> AsyncIterator[dict[str, str]]:
        while True:
            await asyncio.sleep(0.05)
            yield {"event": "status", "id": "0", "data": json.dumps({"status": "queued"})}

    monkeypatch.setattr(streaming, "generation_events", endless)
    monkeypatch.setattr(streaming, "GONE_POLL_SECONDS", 0.05)
    calls = 0

    async def gone() -> bool:
        nonlocal calls
        calls += 1
        return calls > 2

    started = time.monotonic()
    assert asyncio.run(streaming.finished(1, None, timeout=30, gone=gone)) is None  # type: ignore[arg-type]
    assert time.monotonic() - started < 5


def test_stop_sequences_and_conversations_are_bounded(client: TestClient) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    res = client.post("/v1/chat/completions", json=body | {"stop": ["x" * 257]})
    assert res.status_code == 400 and res.json()["error"]["param"].startswith("stop"), res.text
    assert inference.held_back("S", ["STOP" * 64]) == 1 and inference.held_back("", ["STOP"]) == 0
    long = [{"role": "user", "content": "x" * 15_000}, {"role": "assistant", "content": "y" * 6_000}]
    res = client.post("/v1/chat/completions", json=body | {"messages": long})
    assert res.status_code == 400 and res.json()["error"]["param"] == "messages", res.text
    res = client.post("/v1/completions", json={"model": "m", "prompt": "x", "echo": True})
    assert res.status_code == 400 and res.json()["error"]["param"] == "echo"


def test_length_when_the_worker_lowered_max_tokens_to_fit_the_context() -> None:
    usage = {"prompt_tokens": 250, "completion_tokens": 6, "max_new_tokens": 6}  # a 256-position model
    assert inference.chat_completion(_row("abc", usage=usage), "m")["choices"][0]["finish_reason"] == "length"


def test_results_file_streams_rows_by_step(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    from backend.db import JobMetric, session_scope
    from backend.openai_compat import results

    monkeypatch.setattr(results, "PAGE", 2)  # steps spread over pages, one step split across two
    job_id, _ = _job(client, status="succeeded")
    with session_scope() as s:
        for step, values in [(3, {"loss": 0.3}), (1, {"loss": 0.9}), (2, {"loss": 0.5}), (2, {"eval_loss": 0.6})]:
            s.add(JobMetric(job_id=job_id, step=step, values=values))
        s.add(JobMetric(job_id=job_id, step=4, values={"learning_rate": 0.1}))  # no column of the CSV
    file_id = ids.results_id(job_id)
    assert client.get(f"/v1/files/{file_id}").json()["bytes"] is None  # not built to be measured
    lines = client.get(f"/v1/files/{file_id}/content").text.splitlines()
    assert lines == [
        "step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy",
        "1,0.9,,,",
        "2,0.5,,0.6,",
        "3,0.3,,,",
    ]
    missing = client.get("/v1/files/nope")
    assert missing.status_code == 404 and missing.json()["error"]["param"] == "file_id"


def test_a_checkpoint_model_is_found_only_when_it_exists(client: TestClient) -> None:
    from backend.job.checkpoints import MARKER, checkpoints_key
    from backend.storage import get_storage

    job_id, model_id = _job(client)
    folder = get_storage().local_path(checkpoints_key(job_id))
    assert folder is not None
    (folder / "checkpoint-4").mkdir(parents=True)
    (folder / "checkpoint-4" / MARKER).write_text("4")
    name = ids.fine_tuned_id(f"studio-model-{model_id}", "", job_id, 4)
    assert client.get(f"/v1/models/{name}").json()["id"] == name
    for wrong in (
        ids.fine_tuned_id(f"studio-model-{model_id}", "", job_id, 5),  # no such step
        ids.fine_tuned_id(f"studio-model-{model_id}", "other", job_id, 4),  # not its suffix
        ids.fine_tuned_id(f"studio-model-{model_id + 1}", "", job_id, 4),  # not its base
    ):
        res = client.get(f"/v1/models/{wrong}")
        assert res.status_code == 404 and res.json()["error"]["param"] == "model", wrong


def test_job_view_shapes_and_cancelling_an_ended_job(client: TestClient) -> None:
    job_id, _ = _job(client, status="succeeded", hyperparameters={"epochs": 2.0}, objective="kto")
    view = client.get(f"/v1/fine_tuning/jobs/ftjob-{job_id}").json()
    assert view["hyperparameters"]["n_epochs"] == 2 and '"n_epochs":2,' in client.get(
        f"/v1/fine_tuning/jobs/ftjob-{job_id}"
    ).text.replace(" ", "")
    assert view["method"]["type"] == "kto"  # not passed off as supervised
    res = client.post(f"/v1/fine_tuning/jobs/ftjob-{job_id}/cancel")
    assert res.status_code == 400 and res.json()["error"]["param"] == "fine_tuning_job_id", res.text


def test_a_checkpoint_at_each_epoch_in_the_studio_body() -> None:
    from backend.job.schemas import JobCreate as StudioJobCreate

    body = JobCreate.model_validate(
        {"model": "m", "training_file": "f", "hyperparameters": {"n_epochs": 5}}  # the last three are kept
    )
    studio = StudioJobCreate.model_validate(
        studio_body(body, base_id=4, train=_dataset(1), valid=None, steps_per_epoch=7)
    )
    assert (studio.hyperparameters.checkpoint_steps, studio.hyperparameters.keep_checkpoints) == (7, 3)
