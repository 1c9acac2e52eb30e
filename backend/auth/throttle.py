"""Login throttling: failed logins are counted per account and per client address, and after a few the key must
wait, twice as long after each further failure, before its next attempt is even checked.

The counts live in the database (LoginThrottle), so every API process and a restart see the same ones. An attempt
while blocked is refused before the password is verified: a guesser learns nothing and costs nothing."""

import ipaddress
import math
from datetime import datetime, timedelta

from sqlalchemy import case, delete, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from starlette.requests import Request

from backend.auth.events import record_event
from backend.auth.service import authenticate
from backend.db import LoginThrottle, User, session_scope, utcnow
from backend.errors import DomainError, Unauthorized
from backend.security.origin import client_host

BLOCKING_FAILURE = 5  # the failure that first blocks (for 1 s; 2 s after the next, then 4, ...)
MAX_BLOCK = timedelta(minutes=15)
FORGET_AFTER = timedelta(hours=1)  # a key with no failure for this long starts counting afresh


class Throttled(DomainError):
    """Too many failed logins for this account or from this address; `retry_after` is in whole seconds."""

    status_code = 429

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"too many failed logins: try again in {retry_after} s", code="throttled")
        self.retry_after = retry_after
        self.headers = {"Retry-After": str(retry_after)}


def now() -> datetime:
    """The throttle's clock (tests move it instead of sleeping)."""
    return utcnow()


def client_address(request: Request) -> str:
    """The address a login came from (backend.security.origin.client_host), an IPv6 one as its /64: one
    subscriber holds a whole /64, so counting single addresses there would count nothing."""
    address = client_host(request.scope)
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if ip.version == 6 and not ip.is_loopback:
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


def login(session: Session, *, email: str, password: str, client: str) -> User:
    """The user, when neither the account nor the client is blocked and the password matches. A failure counts
    against both (committed at once, whatever becomes of the request); a success forgets both counts."""
    email = email.strip().lower()
    keys = {"account": f"email:{email}", "client": f"client:{client}"}
    refuse_if_blocked(session, list(keys.values()))
    try:
        user = authenticate(session, email=email, password=password)
    except Unauthorized:
        count_failure(keys, email=email, client=client)
        raise
    # Only the account's count: an address's failures against other accounts stay counted (one's own good login
    # must not wash a spray of guesses), and age out after FORGET_AFTER.
    session.execute(delete(LoginThrottle).where(LoginThrottle.key == keys["account"]))
    return user


def refuse_if_blocked(session: Session, keys: list[str]) -> None:
    """Throttled (with the longest wait) when any of `keys` is blocked right now."""
    at = now()
    until = session.scalar(
        select(LoginThrottle.blocked_until)
        .where(LoginThrottle.key.in_(keys), LoginThrottle.blocked_until > at)
        .order_by(LoginThrottle.blocked_until.desc())
        .limit(1)
    )
    if until is not None:
        raise Throttled(max(1, math.ceil((until - at).total_seconds())))


def block_for(failures: int) -> timedelta | None:
    """How long a key with this many recent failures waits: nothing for the first four, then 1 s doubling."""
    if failures < BLOCKING_FAILURE:
        return None
    # The exponent is bounded first: 2**10 s already passes the cap, and a huge count must not build a huge int.
    return min(timedelta(seconds=2 ** min(failures - BLOCKING_FAILURE, 10)), MAX_BLOCK)


def count_failure(keys: dict[str, str], *, email: str, client: str) -> None:
    """One more failure for each key, in a transaction of its own; a key that becomes blocked is a security
    event (one per failure that blocks, and none per refused attempt: those are never counted)."""
    at = now()
    blocked = []
    with session_scope() as s:
        for what, key in keys.items():
            failures = _bump(s, key, at)
            wait = block_for(failures)
            if wait is not None:
                s.execute(update(LoginThrottle).where(LoginThrottle.key == key).values(blocked_until=at + wait))
                blocked.append(f"{what} blocked for {int(wait.total_seconds())} s after {failures} failures")
        if blocked:
            message = f"failed logins for {email} from {client}: {'; '.join(blocked)}"
            record_event(s, kind="login_throttled", email=email, client=client, message=message)


def _bump(s: Session, key: str, at: datetime) -> int:
    """The key's failure count after adding one, upserted race-free: the UPDATE is atomic (a row lock on
    PostgreSQL, the write lock on SQLite); when there is no row yet, the INSERT runs in a savepoint, and losing the
    race to a concurrent first failure (IntegrityError) falls back to the UPDATE."""
    row = LoginThrottle.key == key
    stale = LoginThrottle.last_failed_at.is_(None) | (LoginThrottle.last_failed_at < at - FORGET_AFTER)
    bump = (
        update(LoginThrottle)
        .where(row)
        .values(failures=case((stale, 1), else_=LoginThrottle.failures + 1), last_failed_at=at)
        .execution_options(synchronize_session=False)
    )
    if s.execute(bump).rowcount == 0:  # type: ignore[attr-defined]
        try:
            with s.begin_nested():
                s.execute(insert(LoginThrottle).values(key=key, failures=1, last_failed_at=at))
            _forget_stale(s, at)
        except IntegrityError:
            s.execute(bump)
    return s.scalar(select(LoginThrottle.failures).where(row)) or 1


def _forget_stale(s: Session, at: datetime) -> None:
    # Rows of keys that have been quiet for an hour count for nothing: drop them whenever a new key appears, so a
    # guesser spraying made-up emails cannot grow the table without bound.
    quiet = LoginThrottle.last_failed_at < at - FORGET_AFTER
    s.execute(
        delete(LoginThrottle).where(quiet, (LoginThrottle.blocked_until.is_(None)) | (LoginThrottle.blocked_until < at))
    )


def unblock(session: Session, *, email: str, by: str, client: str | None = None) -> bool:
    """Forget an account's failed logins (an administrator, for someone kept locked out by a guesser's trickle of
    failures); a security event. False when it had none."""
    email = email.strip().lower()
    gone = session.execute(delete(LoginThrottle).where(LoginThrottle.key == f"email:{email}")).rowcount  # type: ignore[attr-defined]
    if gone:
        record_event(session, kind="login_unblocked", email=email, client=client, message=f"{by} unblocked {email}")
    return bool(gone)
