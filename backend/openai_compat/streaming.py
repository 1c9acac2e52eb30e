"""`stream: true`: a generation's text as OpenAI's server-sent chunks (`data: {...}` lines, then `data: [DONE]`).

The text comes from the playground's own stream of the row (backend/playground/stream.py). A piece that may be
the start of a stop sequence waits until the next piece says whether it is one; with tools, the answer is held
whole, since only the finished text tells a tool call from prose.
"""

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio
from anyio import to_thread
from sqlalchemy import or_, update

from backend.db import Generation, session_scope, utcnow
from backend.events import Broadcaster, publish_generation
from backend.openai_compat.errors import error_body
from backend.openai_compat.inference import answer, cut_at_stop, held_back, text_pieces, tool_calls_with_ids, usage_of
from backend.playground.stream import generation_events
from backend.work.kinds import GENERATION

# How often a waiting request looks whether its client is still there.
GONE_POLL_SECONDS = 1.0


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


async def finished(
    generation_id: int, broadcaster: Broadcaster, *, timeout: float, gone: Callable[[], Awaitable[bool]]
) -> Generation | None:
    """Wait until the generation has ended: its final row; None when `timeout` seconds passed first, or the
    client left (`gone`)."""
    ended = False
    with anyio.move_on_after(timeout):
        async with anyio.create_task_group() as group:

            async def watch_client() -> None:
                while not await gone():
                    await anyio.sleep(GONE_POLL_SECONDS)
                group.cancel_scope.cancel()

            group.start_soon(watch_client)
            async for _ in text_pieces(generation_events(generation_id, 0, broadcaster)):
                pass
            ended = True
            group.cancel_scope.cancel()
    return await to_thread.run_sync(snapshot, generation_id) if ended else None


def give_up(generation_id: int, error: str) -> None:
    """End a generation nobody waits for any more: failed with `error`. A queued one is never claimed; a running
    one's worker finds the row no longer its own at its next write (the lease's WHERE clause) and stops."""
    with session_scope() as s:
        s.execute(
            update(Generation)
            .where(Generation.id == generation_id, or_(GENERATION.is_queued(), GENERATION.is_running()))
            .values(status=GENERATION.failed, error=error, finished_at=utcnow(), lease_worker=None)
            .execution_options(synchronize_session=False)
        )
    publish_generation(generation_id)


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
    text, sent, stopped, ended = "", 0, False, False
    try:
        async for piece, status in text_pieces(generation_events(row.id, 0, broadcaster)):
            if status is not None:
                ended = True
                break
            text += piece
            if whole or stopped:
                continue
            cut, stopped = cut_at_stop(text, stops)
            ready = len(cut) if stopped else len(cut) - held_back(cut, stops)
            if ready > sent:
                yield out.text(cut[sent:ready])
                sent = ready
    finally:
        if not ended:  # the client left (the response is cancelled): the worker need not go on writing
            with anyio.CancelScope(shield=True):
                await to_thread.run_sync(give_up, row.id, "the client left before the answer ended")
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
