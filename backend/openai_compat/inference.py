"""/v1/chat/completions and /v1/completions: a playground generation on the workers that answer the Playground,
waited for (or streamed) and returned in OpenAI's shape."""

import json
from collections.abc import AsyncIterator
from typing import Any

from pydantic import ValidationError
from sqlalchemy.orm import Session

from backend.dataset.formats import chat
from backend.dataset.formats.errors import FormatError
from backend.db import Generation, User
from backend.errors import Invalid
from backend.openai_compat import ids, schemas
from backend.openai_compat.errors import ApiError
from backend.openai_compat.models import base_model, fine_tuned_job
from backend.playground import service as playground
from backend.playground.schemas import MAX_NEW_TOKENS, MAX_PROMPT_CHARS, GenerationCreate
from backend.playground.tool_calls import parse_tool_calls
from backend.work.kinds import GENERATION
from backend.work.reaper import can_take

# OpenAI answers up to the model's context when max_tokens is left out; a worker on a CPU would take minutes.
DEFAULT_MAX_TOKENS = 256
# The Playground's bound on one prompt, for the whole conversation (its turns and tool calls): the worker lays it
# out whole, and the request waits on an API thread meanwhile.
MAX_CONVERSATION_CHARS = MAX_PROMPT_CHARS
# A worker that is starting registers within a heartbeat or two.
RETRY_AFTER_SECONDS = 10
# The playground's own names for what a refusal of a GenerationCreate names → OpenAI's parameters.
PARAMS = {"max_new_tokens": "max_tokens", "model_id": "model", "job_id": "model"}


def _target(session: Session, *, user: User, model: str) -> dict[str, Any]:
    """model_id, or job_id and checkpoint, of the model `model` names (404 naming `model` when none)."""
    ref = ids.parse_model(model)
    if ref.job_id is not None:
        job = fine_tuned_job(session, user=user, value=model)
        return {"job_id": job.id, "checkpoint": f"checkpoint-{ref.step}" if ref.step is not None else None}
    try:
        return {"model_id": base_model(session, user=user, value=model).id}
    except ApiError as exc:
        raise ApiError(exc.message, status=404, param="model", code="model_not_found") from None


def _content(value: Any, field: str) -> str:
    """A message's content: a string, or OpenAI's list of parts of which only text parts are read."""
    if value is None or isinstance(value, str):
        return value or ""
    texts = []
    for i, part in enumerate(value):
        if part.get("type") != "text" or not isinstance(part.get("text"), str):
            raise ApiError(f"only text content parts are supported, got {part.get('type')!r}", param=f"{field}[{i}]")
        texts.append(part["text"])
    return "".join(texts)


def conversation(messages: list[schemas.ChatMessage]) -> list[dict[str, Any]]:
    """The request's messages as the studio's canonical messages (checked as a dataset's are); at most
    MAX_CONVERSATION_CHARS characters of content and tool calls in all (400 naming `messages`)."""
    raw = []
    for i, m in enumerate(messages):
        item: dict[str, Any] = {
            "role": "system" if m.role == "developer" else m.role,
            "content": _content(m.content, f"messages[{i}].content"),
        }
        if m.tool_calls:
            item["tool_calls"] = m.tool_calls
        if m.tool_call_id:
            item["tool_call_id"] = m.tool_call_id
        raw.append(item)
    size = sum(len(m["content"]) + len(json.dumps(m.get("tool_calls") or "", ensure_ascii=False)) for m in raw)
    if size > MAX_CONVERSATION_CHARS:
        raise ApiError(
            f"messages: {size} characters; at most {MAX_CONVERSATION_CHARS} in a conversation here", param="messages"
        )
    try:
        return chat.messages(raw, "messages")
    except FormatError as exc:
        raise ApiError(exc.message, param=exc.field) from None


def _max_tokens(body: schemas.SamplingParams) -> int:
    given = getattr(body, "max_completion_tokens", None) or body.max_tokens
    if given is not None and given > MAX_NEW_TOKENS:
        param = "max_completion_tokens" if getattr(body, "max_completion_tokens", None) else "max_tokens"
        raise ApiError(f"{param}: at most {MAX_NEW_TOKENS} tokens per answer here", param=param)
    return given or DEFAULT_MAX_TOKENS


def _generation(
    session: Session, *, user: User, body: schemas.SamplingParams, prompt: str, chat_layout: bool, extra: dict[str, Any]
) -> Generation:
    names = {**PARAMS, "prompt": "messages" if chat_layout else "prompt"}
    if body.n not in (None, 1):
        raise ApiError("n: only one choice per request (n=1) is supported", param="n")
    target = _target(session, user=user, model=body.model)
    if not can_take(session, GENERATION):
        # Queued, the request would wait with no one to answer it (the Playground shows its queue; an API client
        # cannot see it): refused, to be asked again later.
        raise ApiError(
            "no inference worker is running (start one: `studio worker --analysis`); try again later",
            status=503,
            code="no_worker",
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        )
    values = {
        **target,
        "prompt": prompt,
        "max_new_tokens": _max_tokens(body),
        # OpenAI's defaults (the Playground's own temperature default is 0, greedy).
        "temperature": 1.0 if body.temperature is None else body.temperature,
        "top_p": 1.0 if body.top_p is None else body.top_p,
        "chat": chat_layout,
        "tools": extra.pop("tools", None),
    }
    try:
        data = GenerationCreate.model_validate(values)
        row = playground.create_generation(session, user=user, data=data)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else None
        raise ApiError(f"{first['msg']}", param=names.get(field or "", field)) from None
    except Invalid as exc:
        field = exc.details.get("field")
        raise ApiError(exc.message, param=names.get(field, field) if field else None) from None
    if row.params.get("task") == "classify":
        raise ApiError(f"{body.model} is a classifier; it labels text instead of writing it", param="model")
    stops = body.stops()
    if len(stops) > 4:
        raise ApiError("stop: at most 4 sequences", param="stop")
    row.params = {**row.params, **extra, "stop": stops}
    return row


def create_chat(session: Session, *, user: User, body: schemas.ChatCompletionCreate) -> Generation:
    """A queued generation answering the conversation (the caller commits and sends it)."""
    messages = conversation(body.messages)
    if body.tool_choice not in (None, "auto"):
        raise ApiError("tool_choice: only 'auto' is supported (the model decides)", param="tool_choice")
    last_user = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
    prompt = last_user or messages[-1]["content"] or " "
    extra = {"messages": messages, "tools": body.tools}
    return _generation(session, user=user, body=body, prompt=prompt, chat_layout=True, extra=extra)


def create_completion(session: Session, *, user: User, body: schemas.CompletionCreate) -> Generation:
    """A queued generation continuing the prompt as raw text."""
    prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
    if len(prompts) != 1:
        raise ApiError("prompt: one prompt per request is supported", param="prompt")
    if body.suffix:
        raise ApiError("suffix (insertion) is not supported", param="suffix")
    if body.echo:
        raise ApiError("echo is not supported (the answer comes without the prompt)", param="echo")
    return _generation(session, user=user, body=body, prompt=prompts[0], chat_layout=False, extra={})


def cut_at_stop(text: str, stops: list[str]) -> tuple[str, bool]:
    """`text` up to the first stop sequence (OpenAI leaves the sequence out), and whether one was found."""
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    return (text[: min(found)], True) if found else (text, False)


def held_back(text: str, stops: list[str]) -> int:
    """How many characters at the end of `text` may be the start of a stop sequence (not streamed yet)."""
    return max((n for s in stops for n in range(1, min(len(s), len(text) + 1)) if text.endswith(s[:n])), default=0)


def finish_reason(row: Generation, *, stopped: bool, calls: list[Any]) -> str:
    if calls:
        return "tool_calls"
    usage = (row.params or {}).get("usage") or {}
    # The worker's own limit when it had to lower max_tokens to fit the model's context.
    limit = usage.get("max_new_tokens") or row.params.get("max_new_tokens", 0)
    if not stopped and usage.get("completion_tokens", 0) >= int(limit):
        return "length"
    return "stop"


def usage_of(row: Generation) -> dict[str, int]:
    counted = (row.params or {}).get("usage") or {}
    prompt, completion = int(counted.get("prompt_tokens", 0)), int(counted.get("completion_tokens", 0))
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def answer(row: Generation) -> tuple[str, list[Any], str]:
    """(content, tool calls, finish reason) of a finished generation."""
    stops = list((row.params or {}).get("stop") or [])
    text, stopped = cut_at_stop(row.output or "", stops)
    calls = parse_tool_calls(text, bare=bool(row.params.get("tools"))) if row.params.get("tools") else []
    return text, calls, finish_reason(row, stopped=stopped, calls=calls)


def tool_calls_with_ids(row: Generation, calls: list[Any]) -> list[dict[str, Any]]:
    return [{"id": f"call_{row.id}_{i}", **c} for i, c in enumerate(calls)]


def chat_completion(row: Generation, model: str) -> dict[str, Any]:
    content, calls, reason = answer(row)
    message: dict[str, Any] = {"role": "assistant", "content": None if calls else content, "refusal": None}
    if calls:
        message["tool_calls"] = tool_calls_with_ids(row, calls)
    return {
        "id": f"chatcmpl-{row.id}",
        "object": "chat.completion",
        "created": int(row.created_at.timestamp()),
        "model": model,
        "system_fingerprint": None,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": reason}],
        "usage": usage_of(row),
    }


def text_completion(row: Generation, model: str) -> dict[str, Any]:
    text, _, reason = answer(row)
    return {
        "id": f"cmpl-{row.id}",
        "object": "text_completion",
        "created": int(row.created_at.timestamp()),
        "model": model,
        "system_fingerprint": None,
        "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": reason}],
        "usage": usage_of(row),
    }


async def text_pieces(events: AsyncIterator[dict[str, str]]) -> AsyncIterator[tuple[str, str | None]]:
    """(text, None) for each new piece of the answer, then ("", status) once it has ended."""
    async for event in events:
        data = json.loads(event["data"])
        if event["event"] == "token":
            yield data["text"], None
        elif event["event"] == "end":
            yield "", data["status"]
            return
