"""`stream: true`: a generation's text as OpenAI's server-sent chunks (`data: {...}` lines, then `data: [DONE]`).

The text comes from the playground's own stream of the row (backend/playground/stream.py). A piece that may be
the start of a stop sequence waits until the next piece says whether it is one; with tools, the answer is held
whole, since only the finished text tells a tool call from prose.
"""

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from anyio import to_thread

from backend.db import Generation, session_scope
from backend.events import Broadcaster
from backend.openai_compat.errors import error_body
from backend.openai_compat.inference import answer, cut_at_stop, held_back, text_pieces, tool_calls_with_ids, usage_of
from backend.playground.stream import generation_events


def snapshot(generation_id: int) -> Generation:
    """The generation's row as it is now, detached (read in a worker thread, used in the event loop)."""
    with session_scope() as s:
        row = s.get(Generation, generation_id)
        assert row is not None  # created by this request
        return Generation(
            id=row.id,
            params=dict(row.params or {}),
            output=row.output,
            status=row.status,
            error=row.error,
            created_at=row.created_at,
        )


async def finished(generation_id: int, broadcaster: Broadcaster) -> Generation:
    """Wait until the generation has ended; its final row."""
    async for _ in text_pieces(generation_events(generation_id, 0, broadcaster)):
        pass
    return await to_thread.run_sync(snapshot, generation_id)


@dataclass
class Chunks:
    """How each chunk of one request is written: chat (`delta`s) or a completion (`text`)."""

    row: Generation
    model: str
    chat: bool

    def head(self) -> dict[str, Any]:
        return {
            "id": f"{'chatcmpl' if self.chat else 'cmpl'}-{self.row.id}",
            "object": "chat.completion.chunk" if self.chat else "text_completion",
            "created": int(self.row.created_at.timestamp()),
            "model": self.model,
            "system_fingerprint": None,
        }

    def chunk(self, choice: dict[str, Any], finish: str | None = None) -> bytes:
        return sse({**self.head(), "choices": [{"index": 0, **choice, "logprobs": None, "finish_reason": finish}]})

    def usage(self, final: Generation) -> bytes:
        """stream_options.include_usage: a last chunk with no choices and the token counts."""
        return sse({**self.head(), "choices": [], "usage": usage_of(final)})

    def text(self, text: str) -> bytes:
        return self.chunk({"delta": {"content": text}} if self.chat else {"text": text})

    def end(self, reason: str) -> bytes:
        return self.chunk({"delta": {}} if self.chat else {"text": ""}, reason)


def sse(body: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n".encode()


async def stream(
    row: Generation, *, model: str, chat: bool, include_usage: bool, broadcaster: Broadcaster
) -> AsyncIterator[bytes]:
    """The chunks of generation `row` as its worker writes it."""
    out = Chunks(row=row, model=model, chat=chat)
    stops = list(row.params.get("stop") or [])
    whole = bool(row.params.get("tools"))
    if chat:
        yield out.chunk({"delta": {"role": "assistant", "content": ""}})
    text, sent, stopped = "", 0, False
    async for piece, status in text_pieces(generation_events(row.id, 0, broadcaster)):
        if status is not None:
            break
        text += piece
        if whole or stopped:
            continue
        cut, stopped = cut_at_stop(text, stops)
        ready = len(cut) if stopped else len(cut) - held_back(cut, stops)
        if ready > sent:
            yield out.text(cut[sent:ready])
            sent = ready
    final = await to_thread.run_sync(snapshot, row.id)
    if final.status != "done":
        yield sse(error_body(final.error or "the generation failed", status=500))
        return
    content, calls, reason = answer(final)
    if calls:
        deltas = [{"index": i, **call} for i, call in enumerate(tool_calls_with_ids(final, calls))]
        yield out.chunk({"delta": {"tool_calls": deltas}})
    elif len(content) > sent:
        yield out.text(content[sent:])
    yield out.end(reason)
    if include_usage:
        yield out.usage(final)
    yield b"data: [DONE]\n\n"
