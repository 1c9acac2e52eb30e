"""Security headers on every kind of response, streams included; /docs and /redoc served from this origin."""

import io
import re
from collections.abc import Mapping
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from backend.security.headers import CONTENT_SECURITY_POLICY
from tests.api.test_jobs_stream import LiveApp

FIXTURES = Path(__file__).parent.parent / "fixtures"

EXPECTED = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
}


def assert_secured(headers: Mapping[str, str], what: str) -> None:
    for name, value in EXPECTED.items():
        assert headers.get(name) == value, f"{what}: {name}"


def test_the_policy_allows_no_inline_script_and_no_framing() -> None:
    directives = dict(d.strip().split(" ", 1) for d in CONTENT_SECURITY_POLICY.split(";"))
    assert directives["script-src"] == "'self'"
    assert directives["frame-ancestors"] == "'none'" and directives["object-src"] == "'none'"


def test_pages_api_static_and_errors_carry_the_headers(client: TestClient) -> None:
    for path, status, what in (
        ("/jobs", 200, "page"),
        ("/login", 200, "login page"),
        ("/api/jobs", 200, "API JSON"),
        ("/api/health", 200, "health"),
        ("/static/js/common.js", 200, "static file"),
        ("/static/nope.js", 404, "missing static file"),
        ("/api/jobs/999999", 404, "API 404"),
        ("/no-such-page", 404, "404 page"),
        ("/api/jobs/abc", 422, "validation error"),
        ("/docs", 200, "Swagger UI"),
    ):
        res = client.get(path)
        assert res.status_code == status, (path, res.text[:200])
        assert_secured(res.headers, what)
    # ReDoc's page alone may start a worker from a blob: URL (its search index); the rest of the policy holds.
    res = client.get("/redoc")
    assert res.headers["content-security-policy"] == f"{CONTENT_SECURITY_POLICY}; worker-src 'self' blob:"
    assert res.headers["x-frame-options"] == "DENY" and res.headers["x-content-type-options"] == "nosniff"
    res = client.get("/api/jobs", headers={"Authorization": ""})
    assert res.status_code == 401
    assert_secured(res.headers, "401")
    client.headers.pop("Authorization")
    res = client.post("/api/auth/login", json={"email": "x@y.z", "password": "p"}, headers={"Origin": "http://a.b"})
    assert res.status_code == 403
    assert_secured(res.headers, "CSRF refusal")


def test_a_live_stream_carries_them_and_still_streams(app_env: dict[str, str]) -> None:
    from backend.auth.service import create_user, issue_token
    from backend.db import session_scope

    with session_scope() as s:
        token = issue_token(s, user=create_user(s, email="sse@example.com", password="password123"), kind="api")
    with LiveApp() as app, app.client(token) as http:
        data = io.BytesIO((FIXTURES / "tiny.txt").read_bytes())
        dataset = http.post("/api/datasets", files={"file": ("tiny.txt", data)}).json()["id"]
        job = {"kind": "pretrain", "architecture": "tiny", "dataset_id": dataset}
        http.post("/api/jobs", json=job).raise_for_status()
        with http.stream("GET", "/api/jobs/stream") as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            assert_secured(response.headers, "SSE")
            # The snapshot's first event arrives while the stream stays open: nothing buffers it.
            first = next(line for line in response.iter_lines() if line.startswith("event:"))
            assert first.strip() == "event: job"


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
def test_api_docs_load_nothing_from_another_origin(client: TestClient, path: str) -> None:
    html = client.get(path).text
    assert not re.search(r"https?://", html), html
    assert "<script>" not in html and not re.search(r"<script(?![^>]*\bsrc=)", html)  # no inline script
    for asset in re.findall(r'(?:src|href)="([^"]+)"', html):
        res = client.get(asset)
        assert res.status_code == 200 and len(res.content) > 100, asset
    assert client.get("/openapi.json").json()["info"]["title"] == "Fine-Tuning Studio"
