"""Shared pieces of the HTML pages: templates, rendering with the user, redirect to the login page."""

from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates

from backend.config import REPO_ROOT
from backend.db import User
from backend.errors import Invalid
from backend.schemas import MAX_ID

templates = Jinja2Templates(directory=str(REPO_ROOT / "frontend" / "templates"))


class LoginRequired(Exception):
    """Raised by pages when nobody is logged in; answered with a redirect to /login."""


def require(user: User | None) -> User:
    if user is None:
        raise LoginRequired
    return user


def page_id(raw: str, what: str) -> int:
    """The id in a page's URL. Anything else (`/jobs/abc`, `/jobs/0`) is a 422 shown as the friendly error page,
    where the API's validation error would show a person raw JSON."""
    # The length first: int() refuses strings of over 4300 digits with a ValueError.
    if raw.isascii() and raw.isdigit() and len(raw) <= len(str(MAX_ID)) and 1 <= int(raw) <= MAX_ID:
        return int(raw)
    raise Invalid(f"{raw[:40]!r} is not a {what} number: the address holds no {what}", field=f"{what}_id")


def render(request: Request, name: str, user: User | None, status_code: int = 200, **context: Any) -> HTMLResponse:
    context = {"user": user, "status_code": status_code, **context}
    return templates.TemplateResponse(request, name, context, status_code=status_code)


def login_redirect(request: Request) -> RedirectResponse:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/login?next={target}", status_code=303)
