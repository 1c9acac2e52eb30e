"""Dataset analyses with the real processes: the API stores and enqueues, the analysis worker computes.

Embedded (`studio up` starts an analysis worker beside the training worker) and server mode (`studio api`,
`studio worker` and `studio worker --analysis`). Like the browser, the test asks once and then follows the
analysis's SSE stream to its end.
"""

import json
from typing import Any

import httpx

from tests.e2e.sse import read_events
from tests.e2e.test_loop import pretrain, upload
from tests.support import StudioProcess

PAIRS = [
    {"prompt": "Capital of France?", "completion": "Paris"},
    {"prompt": "Capital of Spain?", "completion": "Madrid"},
    {"prompt": "Capital of Spain?", "completion": "Madrid"},  # exact duplicate of record 1
    {"prompt": "Name a colour.", "completion": "Blue"},
]


def follow(client: httpx.Client, url: str) -> dict[str, Any]:
    """POST `url` once (it answers from the cache or queues the work), then follow the analysis's stream to its
    `end`, as the browser does; the last `analysis` event is the finished state."""
    res = client.post(url)
    assert res.status_code in (200, 202), res.text
    state = dict(res.json())
    if state["status"] in ("done", "failed"):
        return state
    statuses = []
    for event in read_events(client, f"/api/datasets/analyses/{state['id']}/stream"):
        if event.event == "end":
            assert event.data["status"] == state["status"], statuses
            return state
        state = event.data
        statuses.append(state["status"])
    raise AssertionError(f"the stream of {url} ended without an end event: {statuses}")


def test_stats_render_hygiene_and_fixes(shared_studio: StudioProcess) -> None:
    studio = shared_studio
    client = studio.client()
    job = pretrain(client, upload(client, "tiny.txt")["id"], max_steps=3)
    job = studio.wait_job(client, job["id"], ("succeeded", "failed"))
    assert job["status"] == "succeeded", studio.logs()
    base = next(m for m in client.get("/api/models").json()["items"] if m["job_id"] == job["id"])

    body = "".join(json.dumps(r) + "\n" for r in PAIRS).encode()
    res = client.post("/api/datasets", files={"file": ("pairs.jsonl", body)})
    assert res.status_code == 201, res.text
    ds = res.json()
    params = f"base_model={base['id']}&max_length=64"

    stats = follow(client, f"/api/datasets/{ds['id']}/stats?{params}&batch_size=2")
    assert stats["status"] == "done", (stats, studio.logs())
    assert (stats["result"]["records"], stats["result"]["steps_per_epoch"]) == (4, 2)

    res = client.post(f"/api/datasets/{ds['id']}/render?{params}&index=3")
    assert res.status_code == 200, (res.text, studio.logs())
    render = res.json()["result"]
    assert "".join(t["text"] for t in render["tokens"] if t["trained"]) == "Blue<|endoftext|>"

    hygiene = follow(client, f"/api/datasets/{ds['id']}/hygiene")
    assert hygiene["status"] == "done", hygiene
    assert hygiene["result"]["exact_duplicates"] == [[1, 2]]

    res = client.post(f"/api/datasets/{ds['id']}/fixes", json={"drop_exact_duplicates": True})
    assert res.status_code == 201, res.text
    v2 = res.json()
    assert (v2["version"], v2["parent_id"], v2["record_count"]) == (2, ds["id"], 3)
