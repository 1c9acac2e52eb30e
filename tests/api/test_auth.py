"""Accounts, sessions and tokens: nothing is reachable without one."""

from fastapi.testclient import TestClient


def test_api_requires_a_token(client: TestClient) -> None:
    for path in ("/api/datasets", "/api/jobs", "/api/models", "/api/me"):
        assert client.get(path, headers={"Authorization": ""}).status_code == 401
    assert client.get("/api/jobs", headers={"Authorization": "Bearer sts_wrong"}).status_code == 401


def test_password_login_sets_a_session_cookie(client: TestClient) -> None:
    client.headers.pop("Authorization")
    client.headers["Origin"] = "http://testserver"  # as a browser sends it: cookie writes need it (CSRF)
    assert client.post("/api/auth/login", json={"email": "owner@example.com", "password": "nope"}).status_code == 401
    res = client.post("/api/auth/login", json={"email": "OWNER@example.com", "password": "password123"})
    assert res.status_code == 200
    assert client.get("/api/me").json()["email"] == "owner@example.com"
    csrf = {"X-CSRF-Token": client.cookies["studio_csrf"]}
    token = client.post("/api/tokens", json={"name": "script"}, headers=csrf).json()["token"]
    client.cookies.clear()
    assert client.get("/api/me", headers={"Authorization": f"Bearer {token}"}).status_code == 200


def test_pages_redirect_to_login(client: TestClient) -> None:
    client.headers.pop("Authorization")
    client.headers["Origin"] = "http://testserver"  # as a browser sends it: the login form needs it (CSRF)
    res = client.get("/jobs", follow_redirects=False)
    assert res.status_code == 303 and res.headers["location"].startswith("/login")
    form = {"email": "owner@example.com", "password": "password123", "next": "/datasets"}
    res = client.post("/login", data=form, follow_redirects=False)
    assert res.status_code == 303 and res.headers["location"] == "/datasets"
    assert client.get("/datasets").status_code == 200


def test_passwords_are_argon2_hashed_and_tokens_stored_hashed(client: TestClient) -> None:
    from sqlalchemy import select

    from backend.db import Token, User, session_scope

    with session_scope() as s:
        user = s.scalar(select(User).where(User.email == "owner@example.com"))
        assert user is not None and user.password_hash.startswith("$argon2")
        secret = client.headers["Authorization"].split()[1]
        assert all(secret not in t.token_hash for t in s.scalars(select(Token)))


def test_last_used_is_written_in_its_own_short_transaction(client: TestClient) -> None:
    """Auth leaves nothing pending in the request's session: on SQLite that would hold the write lock for
    the whole request (a long upload), failing every other writer."""
    from sqlalchemy import select, update

    from backend.auth.service import user_for_token
    from backend.db import Token, session_scope

    secret = client.headers["Authorization"].split()[1]
    with session_scope() as s:
        s.execute(update(Token).values(last_used_at=None))
    with session_scope() as request_session:
        assert user_for_token(request_session, secret) is not None
        assert not request_session.dirty and not request_session.new
        with session_scope() as other:  # already committed, and another writer is not blocked
            assert all(t.last_used_at is not None for t in other.scalars(select(Token)))
            other.execute(update(Token).values(name="still writable"))
