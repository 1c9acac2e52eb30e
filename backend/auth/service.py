"""Accounts, browser sessions and API tokens. Passwords are argon2-hashed; tokens are stored as sha256."""

import functools
import hashlib
import secrets
from datetime import timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import func, or_, select, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from backend.config import get_settings
from backend.db import Token, User, session_scope, utcnow
from backend.errors import Conflict, Invalid, NotFound, Unauthorized

_hasher = PasswordHasher()
SESSION_COOKIE = "studio_session"
TOKEN_PREFIX = "sts_"
TOUCH_EVERY = timedelta(minutes=5)  # how stale `last_used_at` may get before a request updates it


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


def issue_token(session: Session, *, user: User, kind: str, name: str = "") -> str:
    """A fresh secret for a browser session (expires) or a script (does not). Only its hash is kept."""
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    expires = utcnow() + timedelta(days=get_settings().session_days) if kind == "session" else None
    session.add(Token(user_id=user.id, kind=kind, name=name, token_hash=_digest(secret), expires_at=expires))
    session.flush()
    return secret


def user_for_token(session: Session, secret: str) -> User | None:
    """The token's user, or None when unknown or expired; notes when the token was last used."""
    token = session.scalar(select(Token).where(Token.token_hash == _digest(secret)))
    if token is None or (token.expires_at is not None and token.expires_at < utcnow()):
        return None
    # Only write when stale: a write per request would contend with workers on SQLite.
    if token.last_used_at is None or utcnow() - token.last_used_at > TOUCH_EVERY:
        _touch(token.id)
    return session.get(User, token.user_id)


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


def revoke_token(session: Session, secret: str) -> None:
    token = session.scalar(select(Token).where(Token.token_hash == _digest(secret)))
    if token is not None:
        session.delete(token)
