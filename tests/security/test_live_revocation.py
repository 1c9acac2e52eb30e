"""An open live stream answers to the credential that opened it while it stays open: revoking the token (or
disabling the account, or logging the session out: the same check) ends the stream at its next event, and that
event is not sent."""

import time

import httpx

from backend.auth.live import RECHECK_SECONDS
from tests.e2e.sse import read_events
from tests.e2e.test_loop import pretrain, upload
from tests.support import StudioProcess


def test_a_revoked_token_ends_the_streams_it_opened(shared_studio: StudioProcess) -> None:
    api = shared_studio.client()
    created = api.post("/api/tokens", json={"name": "dashboard"})
    assert created.status_code == 201, created.text
    dashboard = httpx.Client(
        base_url=shared_studio.url, headers={"Authorization": f"Bearer {created.json()['token']}"}, timeout=60
    )
    dataset = upload(api, "tiny.txt")
    events = read_events(dashboard, "/api/jobs/stream", deadline_seconds=90)

    first = pretrain(api, dataset["id"], max_steps=1)
    seen = next(events)
    assert seen.event == "job" and seen.data["id"] == first["id"]  # the stream works while the token does

    assert api.delete(f"/api/tokens/{created.json()['id']}").status_code == 204
    time.sleep(RECHECK_SECONDS + 0.5)
    second = pretrain(api, dataset["id"], max_steps=1)
    rest = list(events)  # ends once the revocation is seen; never reaches its 90 s deadline
    assert second["id"] not in [e.data.get("id") for e in rest if e.event == "job"], rest
    assert dashboard.get("/api/jobs").status_code == 401
