"""Accounts, browser sessions and API tokens. Passwords are argon2-hashed; tokens are stored as sha256."""

import functools
import hashlib
import secrets
from datetime import UTC, datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import func, or_, select, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from backend.auth.events import record_event
from backend.config import get_settings
from backend.db import Token, User, session_scope, utcnow
from backend.errors import Conflict, Forbidden, Invalid, NotFound, Unauthorized

_hasher = PasswordHasher()
SESSION_COOKIE = "studio_session"
TOKEN_PREFIX = "sts_"
TOUCH_EVERY = timedelta(minutes=5)  # how stale `last_used_at` may get before a request updates it
MAX_TOKEN_DAYS = 3650  # the furthest an API token's expiry may be set


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_user(session: Session, *, email: str, password: str, is_admin: bool = False) -> User:
    """A new account; the email is the login."""
    email = email.strip().lower()
    if "@" not in email:
        raise Invalid(f"not an email address: {email!r}", field="email")
    if len(password) < 8:
        raise Invalid("password must have at least 8 characters", field="password")
    if session.scalar(select(User).where(User.email == email)):
        raise Conflict(f"user {email} already exists")
    user = User(email=email, password_hash=_hasher.hash(password), is_admin=is_admin)
    session.add(user)
    session.flush()
    return user


def user_count(session: Session) -> int:
    return session.scalar(select(func.count(User.id))) or 0


def get_user_by_email(session: Session, email: str) -> User:
    user = session.scalar(select(User).where(User.email == email.strip().lower()))
    if user is None:
        raise NotFound(f"no user {email}")
    return user


@functools.cache
def _dummy_hash() -> str:
    """A hash of a random password, made with the same parameters as real ones (so verifying it costs the same)."""
    return _hasher.hash(secrets.token_urlsafe(16))


def authenticate(session: Session, *, email: str, password: str) -> User:
    """The user whose password matches, else Unauthorized (same message either way, and the same work: an unknown
    email is verified against a dummy hash, so the answer's timing does not tell which emails have accounts)."""
    dummy = _dummy_hash()  # made before the lookup, so even the first unknown email costs no extra hashing
    user = session.scalar(select(User).where(User.email == email.strip().lower()))
    try:
        matches: bool = _hasher.verify(user.password_hash if user else dummy, password)
    except (VerificationError, InvalidHashError):
        matches = False
    # A disabled account is refused only after the full verify, with the wrong-password message: no oracle.
    if user is None or not matches or user.disabled_at is not None:
        raise Unauthorized("wrong email or password")
    return user


def issue_token(session: Session, *, user: User, kind: str, name: str = "", expires_at: datetime | None = None) -> str:
    """A fresh secret for a browser session (expires after `session_days`) or a script (at `expires_at`, or
    never). Only its hash is kept."""
    return create_token(session, user=user, kind=kind, name=name, expires_at=expires_at)[1]


def create_token(
    session: Session, *, user: User, kind: str, name: str = "", expires_at: datetime | None = None
) -> tuple[Token, str]:
    """The new token's row and its secret (the one moment the secret exists outside the client)."""
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    if kind == "session":
        expires_at = utcnow() + timedelta(days=get_settings().session_days)
    token = Token(user_id=user.id, kind=kind, name=name, token_hash=_digest(secret), expires_at=expires_at)
    session.add(token)
    session.flush()
    return token, secret


def token_expiry(*, days: int | None = None, at: datetime | None = None) -> datetime | None:
    """When a new API token stops working: `days` from now, at `at` (naive means UTC), or never."""
    if days is not None and at is not None:
        raise Invalid("give expires_in_days or expires_at, not both", field="expires_at")
    if days is not None:
        if not 1 <= days <= MAX_TOKEN_DAYS:
            raise Invalid(f"expires_in_days must be 1 to {MAX_TOKEN_DAYS}", field="expires_in_days")
        return utcnow() + timedelta(days=days)
    if at is None:
        return None
    at = at if at.tzinfo else at.replace(tzinfo=UTC)
    if at <= utcnow():
        raise Invalid("expires_at is in the past", field="expires_at")
    if at > utcnow() + timedelta(days=MAX_TOKEN_DAYS):
        raise Invalid(f"expires_at is more than {MAX_TOKEN_DAYS} days away", field="expires_at")
    return at


def is_expired(token: Token) -> bool:
    return token.expires_at is not None and token.expires_at <= utcnow()


def user_for_token(session: Session, secret: str) -> User | None:
    """The token's user, or None when the token is unknown or expired or its user disabled; notes when the
    token was last used."""
    token = session.scalar(select(Token).where(Token.token_hash == _digest(secret)))
    if token is None or is_expired(token):
        return None
    user = session.get(User, token.user_id)
    if user is None or user.disabled_at is not None:  # disabling takes effect on the very next request
        return None
    # Only write when stale: a write per request would contend with workers on SQLite.
    if token.last_used_at is None or utcnow() - token.last_used_at > TOUCH_EVERY:
        _touch(token.id)
    return user


def _touch(token_id: int) -> None:
    """Set `last_used_at` in a session of its own, committed at once.

    Never in the request's session: that one stays open through a long upload, and on SQLite a pending write
    there would hold the database's write lock for the whole request. Best effort: a busy database skips it."""
    now = utcnow()
    stale = or_(Token.last_used_at.is_(None), Token.last_used_at < now - TOUCH_EVERY)
    try:
        with session_scope() as s:
            s.execute(update(Token).where(Token.id == token_id, stale).values(last_used_at=now))
    except OperationalError:
        pass


def end_session(session: Session, secret: str) -> None:
    """Log out: the browser session with this secret ends. An API token sent the same way stays valid: logging
    out of the web page must not break the scripts that use the account."""
    token = session.scalar(select(Token).where(Token.token_hash == _digest(secret), Token.kind == "session"))
    if token is not None:
        session.delete(token)


def api_tokens(session: Session, *, user_id: int) -> list[Token]:
    """The user's API tokens, newest first (browser sessions are not listed)."""
    query = select(Token).where(Token.user_id == user_id, Token.kind == "api")
    return list(session.scalars(query.order_by(Token.created_at.desc(), Token.id.desc())))


def revoke_api_token(session: Session, *, actor: User, token_id: int, client: str | None = None) -> None:
    """Delete an API token of the actor's own, or (an administrator) anyone's; others' ids are a 404."""
    token = session.get(Token, token_id)
    if token is None or token.kind != "api" or (token.user_id != actor.id and not actor.is_admin):
        raise NotFound(f"no API token {token_id}")
    _revoke(session, token, by=actor.email, client=client, event=token.user_id != actor.id)


def revoke_token_by_id(session: Session, *, token_id: int, by: str) -> Token:
    """Delete any API token (the operator's `studio tokens revoke`); recorded as a security event."""
    token = session.get(Token, token_id)
    if token is None or token.kind != "api":
        raise NotFound(f"no API token {token_id}")
    _revoke(session, token, by=by, client=by, event=True)
    return token


def _revoke(session: Session, token: Token, *, by: str, client: str | None, event: bool) -> None:
    """Delete the token; one revoked for someone else is a security event (its owner did not do it)."""
    if event:
        owner = session.get(User, token.user_id)
        owner_email = owner.email if owner else None
        message = f"{by} revoked API token {token.id} ({token.name!r}) of {owner_email}"
        record_event(session, kind="token_revoked", email=owner_email, client=client, message=message)
    session.delete(token)


def require_admin(user: User) -> None:
    if not user.is_admin:
        raise Forbidden("administrators only")


def get_user(session: Session, user_id: int) -> User:
    user = session.get(User, user_id)
    if user is None:
        raise NotFound(f"no user {user_id}")
    return user


def list_users(session: Session) -> list[tuple[User, int]]:
    """Every account with its number of API tokens, oldest first."""
    count = select(func.count(Token.id)).where(Token.user_id == User.id, Token.kind == "api").scalar_subquery()
    return [(user, n) for user, n in session.execute(select(User, count).order_by(User.id)).tuples()]


def set_disabled(session: Session, *, user: User, disabled: bool, by: str, client: str | None = None) -> User:
    """Disable an account (it can neither log in nor use its sessions and tokens; its data stays) or enable it
    again. Recorded as a security event when it changes anything."""
    if disabled == (user.disabled_at is not None):
        return user
    user.disabled_at = utcnow() if disabled else None
    kind = "user_disabled" if disabled else "user_enabled"
    message = f"{by} {'disabled' if disabled else 'enabled'} {user.email}"
    record_event(session, kind=kind, email=user.email, client=client, message=message)
    session.flush()
    return user


def admin_set_disabled(
    session: Session, *, actor: User, user_id: int, disabled: bool, client: str | None = None
) -> User:
    """An administrator disables or enables an account other than their own."""
    require_admin(actor)
    user = get_user(session, user_id)
    if disabled and user.id == actor.id:
        # A lone administrator who did this would lock everyone out of the admin pages.
        raise Conflict("you cannot disable your own account")
    return set_disabled(session, user=user, disabled=disabled, by=actor.email, client=client)
