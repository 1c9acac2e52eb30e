"""Dependencies as Annotated aliases: routes declare `session: SessionDep, user: CurrentUser`."""

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from backend.auth.service import SESSION_COOKIE, user_for_token
from backend.db import User, session_scope
from backend.errors import Unauthorized


def get_session() -> Iterator[Session]:
    with session_scope() as session:
        yield session


# scope="function": commit when the route returns, before the response is sent (a client that saw 201 can
# read what it created; no write lock is held while a large download streams).
SessionDep = Annotated[Session, Depends(get_session, scope="function")]


def credential(request: Request) -> str | None:
    """The bearer token or the session cookie the request authenticates with."""
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip()
    return request.cookies.get(SESSION_COOKIE)


def optional_user(request: Request, session: SessionDep) -> User | None:
    secret = credential(request)
    return user_for_token(session, secret) if secret else None


def current_user(user: Annotated[User | None, Depends(optional_user)]) -> User:
    if user is None:
        raise Unauthorized("log in, or send 'Authorization: Bearer <token>'")
    return user


OptionalUser = Annotated[User | None, Depends(optional_user)]
CurrentUser = Annotated[User, Depends(current_user)]
