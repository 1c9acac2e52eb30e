from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from backend.auth import service, throttle
from backend.auth.router import set_session_cookie
from backend.deps import OptionalUser, SessionDep
from backend.errors import Unauthorized
from backend.schemas import Text
from backend.web import render, require

router = APIRouter(include_in_schema=False)


def _safe_next(target: str) -> str:
    # Only local paths: an open redirect would let a link send a fresh login to another site.
    return target if target.startswith("/") and not target.startswith("//") else "/jobs"


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request, user: OptionalUser, next: str = "/jobs") -> Response:
    return render(request, "auth/login.html", user, next=_safe_next(next), error=None)


@router.post("/login")
def login_submit(
    request: Request,
    session: SessionDep,
    email: Annotated[Text, Form(max_length=320)],
    password: Annotated[Text, Form(max_length=1000)],
    next: Annotated[str, Form()] = "/jobs",
) -> Response:
    try:
        user = throttle.login(session, email=email, password=password, client=throttle.client_address(request))
    except throttle.Throttled as exc:
        page = render(request, "auth/login.html", None, status_code=429, next=_safe_next(next), error=exc.message)
        page.headers["Retry-After"] = str(exc.retry_after)
        return page
    except Unauthorized as exc:
        return render(request, "auth/login.html", None, status_code=401, next=_safe_next(next), error=exc.message)
    response = RedirectResponse(_safe_next(next), status_code=303)
    set_session_cookie(response, service.issue_token(session, user=user, kind="session"))
    return response


@router.post("/logout")
def logout(request: Request, session: SessionDep) -> Response:
    secret = request.cookies.get(service.SESSION_COOKIE)
    if secret:
        service.end_session(session, secret)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(service.SESSION_COOKIE)
    return response


@router.get("/account", response_class=HTMLResponse)
def account_page(request: Request, user: OptionalUser) -> Response:
    return render(request, "auth/account.html", require(user))
