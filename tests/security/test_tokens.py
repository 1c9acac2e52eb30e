"""API tokens: named, listed without their secret, expiring, revocable; logging out ends only the browser
session; administrators revoke anyone's tokens and disable accounts (at once: sessions and tokens included)."""

from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from backend.auth.service import SESSION_COOKIE, issue_token
from backend.db import SecurityEvent, Token, User, session_scope, utcnow
from tests.support import password_hash


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def make_user(email: str, *, is_admin: bool = False, kind: str = "api") -> tuple[int, str]:
    """A user (password "password123") and a token of the given kind."""
    with session_scope() as s:
        user = User(email=email, password_hash=password_hash("password123"), is_admin=is_admin)
        s.add(user)
        s.flush()
        return user.id, issue_token(s, user=user, kind=kind, name=f"{kind} of {email}")


def me(client: TestClient, **kwargs: Any) -> int:
    return client.get("/api/me", **kwargs).status_code


def events(kind: str) -> list[SecurityEvent]:
    with session_scope() as s:
        rows = list(s.scalars(select(SecurityEvent).where(SecurityEvent.kind == kind)))
        s.expunge_all()
        return rows


def test_create_list_use_and_revoke(client: TestClient) -> None:
    res = client.post("/api/tokens", json={"name": "laptop script", "expires_in_days": 30})
    assert res.status_code == 201, res.text
    created = res.json()
    secret = created["token"]
    assert secret.startswith("sts_") and created["name"] == "laptop script" and created["expired"] is False
    days = (created["expires_at"], created["created_at"])
    assert days[0] > days[1]
    with session_scope() as s:
        row = s.get(Token, created["id"])
        assert row is not None and row.expires_at is not None
        assert timedelta(days=29, hours=23) < row.expires_at - utcnow() <= timedelta(days=30)

    assert me(client, headers=bearer(secret)) == 200
    res = client.get("/api/tokens")
    assert res.status_code == 200 and secret not in res.text
    (listed,) = [t for t in res.json()["items"] if t["id"] == created["id"]]
    assert "token" not in listed
    assert listed["name"] == "laptop script" and listed["last_used_at"] is not None  # the use above was noted

    assert client.delete(f"/api/tokens/{created['id']}").status_code == 204
    assert me(client, headers=bearer(secret)) == 401
    assert created["id"] not in [t["id"] for t in client.get("/api/tokens").json()["items"]]
    assert client.delete(f"/api/tokens/{created['id']}").status_code == 404
    assert not events("token_revoked")  # revoking one's own token is no security event


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "name"),
        ({"name": "   "}, "name"),
        ({"name": "x" * 201}, "name"),
        ({"name": "n", "expires_in_days": 0}, "expires_in_days"),
        ({"name": "n", "expires_in_days": 3651}, "expires_in_days"),
        ({"name": "n", "expires_at": "2001-01-01T00:00:00Z"}, "expires_at"),
        ({"name": "n", "expires_in_days": 3, "expires_at": "2999-01-01T00:00:00Z"}, "expires_at"),
    ],
)
def test_bad_token_requests_name_the_field(client: TestClient, body: dict[str, Any], field: str) -> None:
    res = client.post("/api/tokens", json=body)
    assert res.status_code == 422, res.text
    assert field in res.text


def test_expires_at_and_an_expired_token(client: TestClient) -> None:
    at = (utcnow() + timedelta(days=2)).replace(microsecond=0, tzinfo=None)  # no offset: read as UTC
    created = client.post("/api/tokens", json={"name": "short", "expires_at": at.isoformat()}).json()
    assert created["expires_at"].startswith(at.isoformat())
    assert me(client, headers=bearer(created["token"])) == 200
    with session_scope() as s:
        s.execute(update(Token).where(Token.id == created["id"]).values(expires_at=utcnow() - timedelta(seconds=1)))
    assert me(client, headers=bearer(created["token"])) == 401
    (listed,) = [t for t in client.get("/api/tokens").json()["items"] if t["id"] == created["id"]]
    assert listed["expired"] is True


def test_another_users_token_is_a_404_and_keeps_working(client: TestClient) -> None:
    _, other = make_user("other@example.com")
    with session_scope() as s:
        other_id = s.scalar(select(Token.id).where(Token.name == "api of other@example.com"))
    assert client.delete(f"/api/tokens/{other_id}").status_code == 404
    assert me(client, headers=bearer(other)) == 200
    assert other_id not in [t["id"] for t in client.get("/api/tokens").json()["items"]]
    # Browser sessions, one's own included, are neither listed nor revocable by id.
    with session_scope() as s:
        owner = s.scalar(select(User).where(User.email == "owner@example.com"))
        assert owner is not None
        issue_token(s, user=owner, kind="session")
        own_session = s.scalar(select(Token.id).where(Token.kind == "session"))
    assert own_session not in [t["id"] for t in client.get("/api/tokens").json()["items"]]
    assert client.delete(f"/api/tokens/{own_session}").status_code == 404


def test_logout_ends_the_session_and_leaves_the_bearer_token(client: TestClient) -> None:
    secret = client.headers["Authorization"].split()[1]
    assert client.post("/api/auth/logout").status_code == 204  # bearer only: nothing to end
    assert me(client) == 200

    with session_scope() as s:
        owner = s.scalar(select(User).where(User.email == "owner@example.com"))
        assert owner is not None
        session_secret = issue_token(s, user=owner, kind="session")
    cookie_only = {"Authorization": "", "Cookie": f"{SESSION_COOKIE}={session_secret}"}
    assert me(client, headers=cookie_only) == 200
    # Bearer and cookie together (a script run from the browser's shell): the cookie's session ends, the token lives.
    res = client.post("/api/auth/logout", headers={"Cookie": f"{SESSION_COOKIE}={session_secret}"})
    assert res.status_code == 204
    assert me(client, headers=cookie_only) == 401
    assert me(client, headers=bearer(secret)) == 200


def test_admin_disables_and_enables_a_user(client: TestClient) -> None:
    admin_id, admin = make_user("admin@example.com", is_admin=True)
    with session_scope() as s:
        owner = s.scalar(select(User).where(User.email == "owner@example.com"))
        assert owner is not None
        owner_id = owner.id
        session_secret = issue_token(s, user=owner, kind="session")
    as_admin = bearer(admin)
    cookie_only = {"Authorization": "", "Cookie": f"{SESSION_COOKIE}={session_secret}"}
    login = {"email": "owner@example.com", "password": "password123"}
    origin = {"Authorization": "", "Origin": "http://testserver"}

    res = client.post(f"/api/users/{owner_id}/disable", headers=as_admin)
    assert res.status_code == 200, res.text
    assert res.json()["disabled_at"] is not None and res.json()["email"] == "owner@example.com"
    assert me(client) == 401  # the API token
    assert me(client, headers=cookie_only) == 401  # the browser session
    assert client.post("/api/auth/login", json=login, headers=origin).status_code == 401
    client.cookies.clear()
    users = client.get("/api/users", headers=as_admin).json()["items"]
    assert [(u["email"], u["disabled_at"] is not None) for u in users] == [
        ("owner@example.com", True),
        ("admin@example.com", False),
    ]

    assert client.post(f"/api/users/{owner_id}/enable", headers=as_admin).json()["disabled_at"] is None
    assert me(client) == 200 and me(client, headers=cookie_only) == 200
    assert client.post("/api/auth/login", json=login, headers=origin).status_code == 200
    client.cookies.clear()

    res = client.post(f"/api/users/{admin_id}/disable", headers=as_admin)
    assert res.status_code == 409 and "your own account" in res.json()["detail"]
    assert client.post("/api/users/999999/disable", headers=as_admin).status_code == 404
    (disabled,) = events("user_disabled")
    (enabled,) = events("user_enabled")
    assert disabled.email == enabled.email == "owner@example.com"
    assert "admin@example.com disabled owner@example.com" in disabled.message


def test_admin_lists_and_revokes_another_users_tokens(client: TestClient) -> None:
    _, admin = make_user("admin@example.com", is_admin=True)
    created = client.post("/api/tokens", json={"name": "ci"}).json()
    owner_id = client.get("/api/me").json()["id"]
    res = client.get(f"/api/users/{owner_id}/tokens", headers=bearer(admin))
    assert res.status_code == 200 and created["token"] not in res.text
    assert "ci" in [t["name"] for t in res.json()["items"]]

    assert client.delete(f"/api/tokens/{created['id']}", headers=bearer(admin)).status_code == 204
    assert me(client, headers=bearer(created["token"])) == 401
    (event,) = events("token_revoked")
    assert event.email == "owner@example.com" and "'ci'" in event.message and "admin@example.com" in event.message


def test_non_admins_cannot_use_the_admin_routes(client: TestClient) -> None:
    other_id, _ = make_user("other@example.com")
    for method, path in [
        ("GET", "/api/users"),
        ("GET", f"/api/users/{other_id}/tokens"),
        ("POST", f"/api/users/{other_id}/disable"),
        ("POST", f"/api/users/{other_id}/enable"),
    ]:
        res = client.request(method, path)
        assert res.status_code == 403, (method, path, res.text)
    with session_scope() as s:
        user = s.get(User, other_id)
        assert user is not None and user.disabled_at is None
