"""A small SSE reader for tests (httpx streaming)."""

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx


@dataclass
class SSEEvent:
    event: str
    id: str
    data: Any


def read_events(
    client: httpx.Client, url: str, last_event_id: str | None = None, deadline_seconds: float = 600
) -> Iterator[SSEEvent]:
    """The stream's events; fails after `deadline_seconds` (the server's pings would keep a read timeout from
    ever firing on a stream that never ends)."""
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    deadline = time.monotonic() + deadline_seconds
    with client.stream("GET", url, headers=headers, timeout=httpx.Timeout(60, read=120)) as res:
        res.raise_for_status()
        event, eid, data = "message", "", []
        for line in res.iter_lines():
            if time.monotonic() > deadline:
                raise AssertionError(f"{url} still streaming after {deadline_seconds:.0f} s")
            if line.startswith(":"):
                continue
            if not line:
                if data:
                    yield SSEEvent(event, eid, json.loads("\n".join(data)))
                event, data = "message", []
                continue
            key, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if key == "event":
                event = value
            elif key == "id":
                eid = value
            elif key == "data":
                data.append(value)
