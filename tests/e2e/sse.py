"""A small SSE reader for tests (httpx streaming)."""

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx


@dataclass
class SSEEvent:
    event: str
    id: str
    data: Any


def read_events(client: httpx.Client, url: str, last_event_id: str | None = None) -> Iterator[SSEEvent]:
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    with client.stream("GET", url, headers=headers, timeout=httpx.Timeout(60, read=120)) as res:
        res.raise_for_status()
        event, eid, data = "message", "", []
        for line in res.iter_lines():
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
