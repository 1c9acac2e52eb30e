from fastapi import APIRouter, Request, Response

from backend.auth import service, throttle
from backend.auth.schemas import (
    LoginRequest,
    TokenCreate,
    TokenCreated,
    TokenList,
    TokenRead,
    UserAdminRead,
    UserList,
    UserRead,
)
from backend.config import get_settings
from backend.db import Token, User
from backend.deps import CurrentUser, SessionDep
from backend.schemas import IdPath
from backend.security.csrf import CSRF_COOKIE, new_token
from backend.security.origin import client_host

router = APIRouter(prefix="/api", tags=["auth"])


def set_session_cookie(response: Response, secret: str) -> None:
    """The session cookie and a fresh CSRF token beside it (backend/security/csrf.py). Both get the Secure flag
    from SecurityHeadersMiddleware when the request came over HTTPS, or here with STUDIO_COOKIE_SECURE."""
    settings = get_settings()
    response.set_cookie(
        service.SESSION_COOKIE,
        secret,
        max_age=settings.session_days * 86400,
        httponly=True,
        # Cross-site POSTs carry no cookie; a page on another port of this host is same-site, though, which the
        # CSRF middleware's Origin and token checks cover.
        samesite="lax",
    )
    # A new token per login: one planted before it (by another page of this host) is not the one in use.
    response.set_cookie(CSRF_COOKIE, new_token(), httponly=False, samesite="lax")


@router.post(
    "/auth/login",
    response_model=UserRead,
    responses={429: {"description": "Too many failed logins; `Retry-After` says how many seconds to wait"}},
)
def login(body: LoginRequest, request: Request, session: SessionDep, response: Response) -> UserRead:
    client = throttle.client_address(request)
    user = throttle.login(session, email=body.email, password=body.password, client=client)
    set_session_cookie(response, service.issue_token(session, user=user, kind="session"))
    return UserRead(id=user.id, email=user.email, is_admin=user.is_admin)


@router.post("/auth/logout", status_code=204)
def logout(request: Request, session: SessionDep, response: Response, user: CurrentUser) -> None:
    """Ends the browser session in the cookie. A bearer token is left valid (204 all the same): revoke an API
    token with DELETE /api/tokens/{id}."""
    secret = request.cookies.get(service.SESSION_COOKIE)
    if secret:
        service.end_session(session, secret)
    response.delete_cookie(service.SESSION_COOKIE)


@router.get("/me", response_model=UserRead)
def me(user: CurrentUser) -> UserRead:
    return UserRead(id=user.id, email=user.email, is_admin=user.is_admin)


def _token_read(token: Token) -> TokenRead:
    return TokenRead(
        id=token.id,
        name=token.name,
        created_at=token.created_at,
        expires_at=token.expires_at,
        last_used_at=token.last_used_at,
        expired=service.is_expired(token),
    )


@router.post("/tokens", response_model=TokenCreated, status_code=201)
def create_token(body: TokenCreate, session: SessionDep, user: CurrentUser) -> TokenCreated:
    """An API token for scripts, optionally expiring; its secret is shown once and stored hashed."""
    expires_at = service.token_expiry(days=body.expires_in_days, at=body.expires_at)
    token, secret = service.create_token(session, user=user, kind="api", name=body.name, expires_at=expires_at)
    return TokenCreated(token=secret, **_token_read(token).model_dump())


@router.get("/tokens", response_model=TokenList)
def list_tokens(session: SessionDep, user: CurrentUser) -> TokenList:
    """The caller's API tokens (never a secret; browser sessions are not listed)."""
    return TokenList(items=[_token_read(t) for t in service.api_tokens(session, user_id=user.id)])


@router.delete("/tokens/{token_id}", status_code=204)
def revoke_token(token_id: IdPath, request: Request, session: SessionDep, user: CurrentUser) -> None:
    """Revoke one of the caller's API tokens (an administrator: anyone's); it stops working at once."""
    service.revoke_api_token(session, actor=user, token_id=token_id, client=client_host(request.scope))


def _user_admin_read(user: User, api_tokens: int) -> UserAdminRead:
    return UserAdminRead(
        id=user.id,
        email=user.email,
        is_admin=user.is_admin,
        created_at=user.created_at,
        disabled_at=user.disabled_at,
        api_tokens=api_tokens,
    )


@router.get("/users", response_model=UserList)
def list_users(session: SessionDep, user: CurrentUser) -> UserList:
    """Every account (administrators only)."""
    service.require_admin(user)
    return UserList(items=[_user_admin_read(u, n) for u, n in service.list_users(session)])


@router.get("/users/{user_id}/tokens", response_model=TokenList)
def user_tokens(user_id: IdPath, session: SessionDep, user: CurrentUser) -> TokenList:
    """Another account's API tokens (administrators only)."""
    service.require_admin(user)
    owner = service.get_user(session, user_id)
    return TokenList(items=[_token_read(t) for t in service.api_tokens(session, user_id=owner.id)])


@router.post("/users/{user_id}/disable", response_model=UserAdminRead)
def disable_user(user_id: IdPath, request: Request, session: SessionDep, user: CurrentUser) -> UserAdminRead:
    """The account can no longer log in, and its sessions and tokens stop working at once (administrators)."""
    return _set_disabled(session, user, user_id, request, disabled=True)


@router.post("/users/{user_id}/unblock", status_code=204)
def unblock_user(user_id: IdPath, request: Request, session: SessionDep, user: CurrentUser) -> None:
    """Forget the account's failed logins, so it can log in at once (administrators)."""
    service.require_admin(user)
    target = service.get_user(session, user_id)
    throttle.unblock(session, email=target.email, by=user.email, client=client_host(request.scope))


@router.post("/users/{user_id}/enable", response_model=UserAdminRead)
def enable_user(user_id: IdPath, request: Request, session: SessionDep, user: CurrentUser) -> UserAdminRead:
    """A disabled account works again, its unexpired tokens included (administrators)."""
    return _set_disabled(session, user, user_id, request, disabled=False)


def _set_disabled(session: SessionDep, actor: User, user_id: int, request: Request, *, disabled: bool) -> UserAdminRead:
    client = client_host(request.scope)
    target = service.admin_set_disabled(session, actor=actor, user_id=user_id, disabled=disabled, client=client)
    return _user_admin_read(target, len(service.api_tokens(session, user_id=target.id)))
