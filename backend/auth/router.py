from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from backend.auth import service, throttle
from backend.auth.schemas import LoginRequest, TokenCreate, TokenRead, UserRead
from backend.config import get_settings
from backend.deps import CurrentUser, SessionDep

router = APIRouter(prefix="/api", tags=["auth"])


def set_session_cookie(response: Response, secret: str) -> None:
    settings = get_settings()
    response.set_cookie(
        service.SESSION_COOKIE,
        secret,
        max_age=settings.session_days * 86400,
        httponly=True,
        samesite="lax",  # cross-site POSTs carry no cookie: the CSRF guard for cookie-authenticated calls
        secure=settings.cookie_secure,
    )


@router.post(
    "/auth/login",
    response_model=UserRead,
    responses={429: {"description": "Too many failed logins; `Retry-After` says how many seconds to wait"}},
)
def login(body: LoginRequest, request: Request, session: SessionDep, response: Response) -> UserRead | JSONResponse:
    client = throttle.client_address(request)
    try:
        user = throttle.login(session, email=body.email, password=body.password, client=client)
    except throttle.Throttled as exc:
        headers = {"Retry-After": str(exc.retry_after)}
        return JSONResponse({"detail": exc.message, **exc.details}, status_code=429, headers=headers)
    set_session_cookie(response, service.issue_token(session, user=user, kind="session"))
    return UserRead(id=user.id, email=user.email, is_admin=user.is_admin)


@router.post("/auth/logout", status_code=204)
def logout(request: Request, session: SessionDep, response: Response, user: CurrentUser) -> None:
    secret = request.cookies.get(service.SESSION_COOKIE)
    if secret:
        service.revoke_token(session, secret)
    response.delete_cookie(service.SESSION_COOKIE)


@router.get("/me", response_model=UserRead)
def me(user: CurrentUser) -> UserRead:
    return UserRead(id=user.id, email=user.email, is_admin=user.is_admin)


@router.post("/tokens", response_model=TokenRead, status_code=201)
def create_token(body: TokenCreate, session: SessionDep, user: CurrentUser) -> TokenRead:
    """An API token for scripts; shown once, stored hashed."""
    return TokenRead(token=service.issue_token(session, user=user, kind="api", name=body.name), name=body.name)
