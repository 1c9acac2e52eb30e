"""Login throttling: five failures per account or per client address, then a doubling wait answered 429 with
`Retry-After` before any password is checked; unknown emails and disabled accounts cost the same work as a wrong
password; each block is one security event, which only administrators can list."""

import threading
from datetime import datetime, timedelta
from typing import Any

import pytest
from argon2 import PasswordHasher
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from backend.auth import service, throttle
from backend.auth.service import issue_token
from backend.db import LoginThrottle, SecurityEvent, User, session_scope, utcnow
from tests.support import password_hash

OWNER = "owner@example.com"  # the `client` fixture's user, password "password123"
# The CSRF guard wants the app's own origin on a login; bearer-authenticated calls are exempt either way.
ORIGIN = {"Origin": "http://testserver"}


class Clock:
    def __init__(self) -> None:
        self.at = utcnow()

    def __call__(self) -> datetime:
        return self.at

    def advance(self, **delta: float) -> None:
        self.at += timedelta(**delta)


class CountingHasher:
    """The real hasher, noting every hash it verifies a password against."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.verified: list[str] = []

    def verify(self, hash: str, password: str) -> bool:
        self.verified.append(hash)
        return bool(self.inner.verify(hash, password))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(throttle, "now", c)
    return c


@pytest.fixture
def cheap_hashes(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """Argon2 at its cheapest for the owner's hash, the dummy hash and new hashes: the tests that count attempts
    run dozens of verifies, each a fifth of a second at the real cost. (The equal-work test keeps the real one.)"""
    cheap = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    dummy = cheap.hash("not anybody's password")
    monkeypatch.setattr(service, "_hasher", cheap)
    monkeypatch.setattr(service, "_dummy_hash", lambda: dummy)
    with session_scope() as s:
        s.execute(update(User).where(User.email == OWNER).values(password_hash=cheap.hash("password123")))


@pytest.fixture
def hasher(monkeypatch: pytest.MonkeyPatch) -> CountingHasher:
    counting = CountingHasher(service._hasher)
    monkeypatch.setattr(service, "_hasher", counting)
    return counting


@pytest.fixture
def anonymous(client: TestClient) -> TestClient:
    """The same app without the fixture user's bearer token: a browser that is not logged in. (Not entered as a
    context manager: `client` already runs the app's lifespan.)"""
    return TestClient(client.app)


def login(c: TestClient, email: str = OWNER, password: str = "password123") -> Any:
    return c.post("/api/auth/login", json={"email": email, "password": password}, headers=ORIGIN)


def make_admin() -> str:
    with session_scope() as s:
        admin = User(email="admin@example.com", password_hash=password_hash("password123"), is_admin=True)
        s.add(admin)
        s.flush()
        return issue_token(s, user=admin, kind="api")


def throttle_rows() -> dict[str, int]:
    with session_scope() as s:
        return {row.key: row.failures for row in s.scalars(select(LoginThrottle))}


def throttled_events() -> list[tuple[str | None, str | None, str]]:
    with session_scope() as s:
        query = select(SecurityEvent).where(SecurityEvent.kind == "login_throttled")
        return [(e.email, e.client, e.message) for e in s.scalars(query)]


def test_the_block_doubles_from_the_fifth_failure_up_to_a_quarter_hour() -> None:
    assert [throttle.block_for(n) for n in range(1, 5)] == [None] * 4
    assert [throttle.block_for(n).total_seconds() for n in (5, 6, 7, 8)] == [1, 2, 4, 8]  # type: ignore[union-attr]
    assert throttle.block_for(15) == throttle.block_for(10**9) == timedelta(minutes=15)


def test_five_failures_then_429_without_checking_the_password(
    cheap_hashes: None, anonymous: TestClient, clock: Clock, hasher: CountingHasher
) -> None:
    for _ in range(5):
        assert login(anonymous, password="wrong-password").status_code == 401
    hasher.verified.clear()
    refused = login(anonymous)  # the right password, right after: refused all the same
    assert refused.status_code == 429, refused.text
    assert refused.headers["Retry-After"] == "1"
    assert refused.json()["code"] == "throttled" and "try again" in refused.json()["detail"]
    assert hasher.verified == []  # no guess is even checked while blocked
    assert throttle_rows() == {f"email:{OWNER}": 5, "client:testclient": 5}

    clock.advance(seconds=1.5)
    ok = login(anonymous)
    assert ok.status_code == 200, ok.text
    # A success forgets the account's count; the address's stays (its own good login must not wash a spray of
    # guesses at other accounts) until an hour without failures.
    assert throttle_rows() == {"client:testclient": 5}
    assert login(anonymous, password="wrong-password").status_code == 401
    assert throttle_rows() == {f"email:{OWNER}": 1, "client:testclient": 6}


def test_each_further_failure_doubles_the_wait_and_an_hour_forgets(
    cheap_hashes: None, anonymous: TestClient, clock: Clock
) -> None:
    for _ in range(5):
        login(anonymous, password="wrong-password")
    clock.advance(seconds=1.5)
    assert login(anonymous, password="wrong-password").status_code == 401  # the 6th failure: 2 s now
    assert login(anonymous).headers["Retry-After"] == "2"
    clock.advance(seconds=1)
    assert login(anonymous).headers["Retry-After"] == "1"  # rounded up, never 0

    clock.advance(hours=1, seconds=2)
    assert login(anonymous, password="wrong-password").status_code == 401
    assert throttle_rows() == {f"email:{OWNER}": 1, "client:testclient": 1}  # counting afresh


def test_one_client_is_blocked_across_emails_and_others_are_not(
    cheap_hashes: None, client: TestClient, clock: Clock
) -> None:
    guesser = TestClient(client.app, client=("10.0.0.1", 50000))
    for n in range(5):
        assert login(guesser, email=f"nobody{n}@example.com", password="guess-1234").status_code == 401
    assert login(guesser).status_code == 429  # the address is blocked, whatever the account
    colleague = TestClient(client.app, client=("10.0.0.2", 50000))
    assert login(colleague).status_code == 200  # each account saw one failure at most: not blocked
    assert len(throttled_events()) == 1 and throttled_events()[0][1] == "10.0.0.1"


def test_the_login_form_is_throttled_too(cheap_hashes: None, anonymous: TestClient, clock: Clock) -> None:
    for _ in range(5):
        login(anonymous, password="wrong-password")
    page = anonymous.post("/login", data={"email": OWNER, "password": "password123"}, headers=ORIGIN)
    assert page.status_code == 429
    assert page.headers["Retry-After"] == "1"
    assert "too many failed logins" in page.text


def test_unknown_emails_and_disabled_accounts_cost_a_full_verify(anonymous: TestClient, hasher: CountingHasher) -> None:
    unknown = login(anonymous, email="nobody@example.com", password="password123")
    wrong = login(anonymous, password="not-the-password")
    with session_scope() as s:
        s.execute(update(User).where(User.email == OWNER).values(disabled_at=utcnow()))
    disabled = login(anonymous)  # the right password of a disabled account
    assert [r.status_code for r in (unknown, wrong, disabled)] == [401, 401, 401]
    assert unknown.json()["detail"] == wrong.json()["detail"] == disabled.json()["detail"]
    assert len(hasher.verified) == 3
    # The dummy hash has the real hashes' parameters ("$argon2id$v=19$m=...,t=...,p=..."), so it costs the same.
    dummy, real, _ = (h.split("$")[1:4] for h in hasher.verified)
    assert dummy == real


def test_a_block_is_one_event_that_only_admins_see(
    cheap_hashes: None, client: TestClient, anonymous: TestClient, clock: Clock
) -> None:
    for _ in range(5):
        login(anonymous, password="wrong-password")
    for _ in range(3):
        assert login(anonymous).status_code == 429  # refused attempts are not counted: no event each
    assert len(throttled_events()) == 1

    admin = {"Authorization": f"Bearer {make_admin()}"}
    listed = anonymous.get("/api/security/events", headers=admin)
    assert listed.status_code == 200, listed.text
    [event] = listed.json()["items"]
    assert (event["kind"], event["email"], event["client"]) == ("login_throttled", OWNER, "testclient")
    assert "account blocked for 1 s after 5 failures" in event["message"]
    assert anonymous.get("/api/security/events?limit=0", headers=admin).status_code == 422

    assert client.get("/api/security/events").status_code == 403  # the fixture's user is no admin
    assert anonymous.get("/api/security/events").status_code == 401
    # The Account page has the events' card (filled by security_events.js) for administrators only.
    assert 'id="security-events"' in anonymous.get("/account", headers=admin).text
    assert 'id="security-events"' not in client.get("/account").text


def test_concurrent_failures_on_a_new_key_are_all_counted(app_env: dict[str, str], clock: Clock) -> None:
    # Every thread finds no row and tries the INSERT; the losers must fall back to the UPDATE, not lose a count.
    start = threading.Barrier(6)
    errors: list[BaseException] = []

    def fail() -> None:
        try:
            start.wait()
            throttle.count_failure({"account": "email:race@example.com"}, email="race@example.com", client="x")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=fail) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert throttle_rows() == {"email:race@example.com": 6}
    assert len(throttled_events()) == 2  # the 5th and the 6th failure each set a new block


def test_an_admin_lifts_a_block_and_scripts_log_in_without_browser_headers(
    cheap_hashes: None, client: TestClient, anonymous: TestClient, clock: Clock
) -> None:
    """A guesser's trickle of failures could keep an account locked: an administrator forgets its count at once.
    And a script that logs in with a password (no cookie, neither Origin nor Referer) is not a forged browser."""
    for _ in range(7):
        login(anonymous, password="wrong-password")
    assert login(anonymous).status_code == 429
    admin = make_admin()
    with session_scope() as s:
        owner_id = s.scalars(select(User.id).where(User.email == OWNER)).one()
    assert anonymous.post(f"/api/users/{owner_id}/unblock").status_code == 401
    assert client.post(f"/api/users/{owner_id}/unblock").status_code == 403  # the owner is no admin
    lifted = client.post(f"/api/users/{owner_id}/unblock", headers={"Authorization": f"Bearer {admin}"})
    assert lifted.status_code == 204, lifted.text
    assert f"email:{OWNER}" not in throttle_rows()
    with session_scope() as s:
        kinds = list(s.scalars(select(SecurityEvent.kind)))
    assert "login_unblocked" in kinds
    # The address is still counted (7 failures): another address logs in as a script would.
    script = TestClient(client.app, client=("10.0.0.9", 50000))
    ok = script.post("/api/auth/login", json={"email": OWNER, "password": "password123"})
    assert ok.status_code == 200, ok.text


def test_ipv6_clients_count_per_64() -> None:
    from starlette.requests import Request

    def address(host: str) -> str:
        return throttle.client_address(Request({"type": "http", "headers": [], "client": (host, 1)}))

    assert address("2001:db8:1:2::1") == address("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert address("2001:db8:1:3::1") != address("2001:db8:1:2::1")
    assert address("10.0.0.1") == "10.0.0.1" and address("::1") == "::1"
