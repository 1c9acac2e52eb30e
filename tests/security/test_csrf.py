"""CSRF: a write that comes with the session cookie needs this app's Origin (or Referer) and the studio_csrf token;
bearer-token requests need neither (backend/security/csrf.py)."""

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

FIXTURES = Path(__file__).parent.parent / "fixtures"
OWN = "http://testserver"  # TestClient's base URL: the Host its requests carry


@pytest.fixture
def bearer(client: TestClient) -> dict[str, str]:
    """The client's bearer header, taken before `browser` removes it."""
    return {"Authorization": client.headers["Authorization"]}


@pytest.fixture
def job_id(client: TestClient, bearer: dict[str, str]) -> int:
    """A queued job of owner@example.com, made with the bearer token (no worker: it stays queued)."""
    data = io.BytesIO((FIXTURES / "tiny.txt").read_bytes())
    res = client.post("/api/datasets", files={"file": ("tiny.txt", data)}, headers=bearer)
    assert res.status_code == 201, res.text
    body = {"kind": "pretrain", "architecture": "tiny", "dataset_id": res.json()["id"]}
    res = client.post("/api/jobs", json={**body, "hyperparameters": {"max_steps": 5}}, headers=bearer)
    assert res.status_code == 201, res.text
    return int(res.json()["id"])


@pytest.fixture
def browser(client: TestClient, bearer: dict[str, str]) -> Iterator[TestClient]:
    """The same client as a browser: no bearer token, logged in with the session cookie."""
    client.headers.pop("Authorization")
    creds = {"email": "owner@example.com", "password": "password123"}
    res = client.post("/api/auth/login", json=creds, headers={"Origin": OWN})
    assert res.status_code == 200, res.text
    assert client.cookies.get("studio_session") and client.cookies.get("studio_csrf")
    yield client
    client.cookies.clear()
    client.headers.update(bearer)


def token(client: TestClient) -> str:
    value = client.cookies.get("studio_csrf")
    assert value
    return value


def job_status(client: TestClient, job_id: int) -> str:
    return str(client.get(f"/api/jobs/{job_id}").json()["status"])


def refused(res: Any, about: str) -> None:
    """`res` (a TestClient response) is a 403 from the CSRF check whose detail mentions `about`."""
    assert res.status_code == 403, res.text
    body = res.json()
    assert body["code"] == "csrf" and about in body["detail"], body


def test_a_cookie_write_without_the_token_is_refused(browser: TestClient, job_id: int) -> None:
    refused(browser.post(f"/api/jobs/{job_id}/cancel", headers={"Origin": OWN}), "token: missing")
    refused(browser.post(f"/api/jobs/{job_id}/cancel", headers={"Origin": OWN, "X-CSRF-Token": "x" * 43}), "match")
    assert job_status(browser, job_id) == "queued"


def test_a_cookie_write_from_another_origin_is_refused_even_with_the_token(browser: TestClient, job_id: int) -> None:
    # A page on another port of the same host is same-site: its requests carry the cookies, and it can plant a
    # studio_csrf cookie of its own for this host. The Origin gives it away.
    for origin in ("http://testserver:8001", "https://testserver", "http://evil.example", "null"):
        res = browser.post(f"/api/jobs/{job_id}/cancel", headers={"Origin": origin, "X-CSRF-Token": token(browser)})
        refused(res, "origin:")
        assert origin in res.json()["detail"]
    res = browser.post(f"/api/jobs/{job_id}/cancel", headers={"X-CSRF-Token": token(browser)})
    refused(res, "neither an Origin nor a Referer")
    res = browser.post(
        f"/api/jobs/{job_id}/cancel", headers={"Referer": "http://testserver:9999/x", "X-CSRF-Token": token(browser)}
    )
    refused(res, "Referer")
    assert job_status(browser, job_id) == "queued"


def test_the_right_origin_and_token_are_accepted(browser: TestClient, job_id: int) -> None:
    res = browser.post(f"/api/jobs/{job_id}/cancel", headers={"Origin": OWN, "X-CSRF-Token": token(browser)})
    assert res.status_code == 200, res.text
    assert job_status(browser, job_id) == "cancelled"
    # Without an Origin, the Referer of one of the app's own pages does as well.
    res = browser.post(
        "/api/tokens", json={"name": "x"}, headers={"Referer": f"{OWN}/account", "X-CSRF-Token": token(browser)}
    )
    assert res.status_code == 201, res.text


def test_a_bearer_token_needs_neither(client: TestClient, job_id: int) -> None:
    res = client.post(f"/api/jobs/{job_id}/cancel", headers={"Origin": "http://evil.example"})
    assert res.status_code == 200, res.text
    assert job_status(client, job_id) == "cancelled"


@pytest.mark.parametrize("action", ["cancel", "pause", "resume", "clone", "/api/auth/logout", "/logout"])
def test_body_less_posts_are_refused_without_the_token(browser: TestClient, job_id: int, action: str) -> None:
    """The form posts another site could auto-submit: no body, so nothing but the CSRF check stands in the way."""
    path = action if action.startswith("/") else f"/api/jobs/{job_id}/{action}"
    before = browser.get("/api/jobs").json()
    # What an auto-submitted form from another port sends: its Origin, an empty form, the cookies.
    form = {"Origin": "http://testserver:8001", "Content-Type": "application/x-www-form-urlencoded"}
    refused(browser.post(path, headers=form), "origin:")
    refused(browser.post(path, headers={"Origin": OWN}), "token:")
    assert browser.get("/api/me").status_code == 200  # still logged in: the logouts were refused
    assert browser.get("/api/jobs").json() == before
    # The studio's own page: a form with the csrf_token field (logout) or a fetch with the header (the rest).
    if action == "/logout":
        res = browser.post(path, data={"csrf_token": token(browser)}, headers={"Origin": OWN}, follow_redirects=False)
        assert res.status_code == 303
    else:
        res = browser.post(path, headers={"Origin": OWN, "X-CSRF-Token": token(browser)})
        assert res.status_code != 403, res.text
    if action.endswith("logout"):
        assert browser.get("/api/me").status_code == 401


def test_login_checks_the_origin_only(client: TestClient) -> None:
    client.headers.pop("Authorization")
    creds = {"email": "owner@example.com", "password": "password123"}
    refused(client.post("/api/auth/login", json=creds, headers={"Origin": "http://testserver:8001"}), "origin:")
    refused(client.post("/login", data=creds, headers={"Origin": "http://evil.example"}), "origin:")
    assert "studio_session" not in client.cookies
    res = client.post("/login", data=creds, headers={"Origin": OWN}, follow_redirects=False)
    assert res.status_code == 303 and client.cookies.get("studio_session")


def test_pages_hand_out_a_token_and_the_logout_form_carries_it(browser: TestClient) -> None:
    browser.cookies.delete("studio_csrf")
    page = browser.get("/jobs")
    handed = page.cookies.get("studio_csrf")
    assert handed and len(handed) >= 32
    set_cookie = next(c for c in page.headers.get_list("set-cookie") if c.startswith("studio_csrf="))
    assert "SameSite=Lax" in set_cookie and "HttpOnly" not in set_cookie
    assert f'name="csrf_token" value="{handed}"' in page.text
    # A page rendered with the cookie keeps it: a form in another tab stays valid.
    again = browser.get("/jobs")
    assert "studio_csrf" not in again.cookies and f'value="{handed}"' in again.text
    assert browser.get("/static/js/common.js").headers.get("set-cookie") is None


def test_cookies_are_secure_over_https_or_when_configured(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    from backend.config import get_settings

    client.headers.pop("Authorization")
    creds = {"email": "owner@example.com", "password": "password123"}

    def set_cookies(**headers: str) -> list[str]:
        res = client.post("/api/auth/login", json=creds, headers={"Origin": OWN, **headers})
        assert res.status_code == 200, res.text
        client.cookies.clear()
        return list(res.headers.get_list("set-cookie"))

    assert not any("Secure" in c for c in set_cookies())
    # A proxy's X-Forwarded-Proto is believed only with STUDIO_TRUST_PROXY.
    assert not any("Secure" in c for c in set_cookies(**{"X-Forwarded-Proto": "https"}))
    monkeypatch.setenv("STUDIO_TRUST_PROXY", "true")
    get_settings.cache_clear()
    forwarded = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "studio.example"}
    cookies = set_cookies(Origin="https://studio.example", **forwarded)
    assert len(cookies) == 2 and all(c.endswith("; Secure") or "; Secure;" in c for c in cookies)
    monkeypatch.delenv("STUDIO_TRUST_PROXY")
    monkeypatch.setenv("STUDIO_COOKIE_SECURE", "true")
    get_settings.cache_clear()
    assert all("Secure" in c for c in set_cookies())
