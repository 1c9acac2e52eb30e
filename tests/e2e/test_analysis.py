"""Dataset analyses with the real processes: the API stores and enqueues, the analysis worker computes.

Embedded (`studio up` starts an analysis worker beside the training worker) and server mode (`studio api`,
`studio worker` and `studio worker --analysis`).
"""

import json
import time
from typing import Any

import httpx

from tests.e2e.test_loop import pretrain, upload
from tests.support import StudioProcess

PAIRS = [
    {"prompt": "Capital of France?", "completion": "Paris"},
    {"prompt": "Capital of Spain?", "completion": "Madrid"},
    {"prompt": "Capital of Spain?", "completion": "Madrid"},  # exact duplicate of record 1
    {"prompt": "Name a colour.", "completion": "Blue"},
]


def poll(client: httpx.Client, url: str, timeout: float = 90) -> dict[str, Any]:
    """GET `url` until the analysis is finished, as the browser does."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        res = client.get(url)
        assert res.status_code in (200, 202), res.text
        body = dict(res.json())
        if body["status"] in ("done", "failed"):
            return body
        time.sleep(0.3)
    raise TimeoutError(f"{url} did not finish")


def test_stats_render_hygiene_and_fixes(studio: StudioProcess) -> None:
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

    stats = poll(client, f"/api/datasets/{ds['id']}/stats?{params}&batch_size=2")
    assert stats["status"] == "done", (stats, studio.logs())
    assert (stats["result"]["records"], stats["result"]["steps_per_epoch"]) == (4, 2)

    res = client.get(f"/api/datasets/{ds['id']}/render?{params}&index=3")
    assert res.status_code == 200, (res.text, studio.logs())
    render = res.json()["result"]
    assert "".join(t["text"] for t in render["tokens"] if t["trained"]) == "Blue<|endoftext|>"

    hygiene = poll(client, f"/api/datasets/{ds['id']}/hygiene")
    assert hygiene["status"] == "done", hygiene
    assert hygiene["result"]["exact_duplicates"] == [[1, 2]]

    res = client.post(f"/api/datasets/{ds['id']}/fixes", json={"drop_exact_duplicates": True})
    assert res.status_code == 201, res.text
    v2 = res.json()
    assert (v2["version"], v2["parent_id"], v2["record_count"]) == (2, ds["id"], 3)
