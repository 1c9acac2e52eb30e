"""Shared pieces of the HTML pages: templates, rendering with the user, redirect to the login page."""

from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates

from backend.config import REPO_ROOT
from backend.db import User

templates = Jinja2Templates(directory=str(REPO_ROOT / "frontend" / "templates"))


class LoginRequired(Exception):
    """Raised by pages when nobody is logged in; answered with a redirect to /login."""


def require(user: User | None) -> User:
    if user is None:
        raise LoginRequired
    return user


def render(request: Request, name: str, user: User | None, status_code: int = 200, **context: Any) -> HTMLResponse:
    return templates.TemplateResponse(request, name, {"user": user, **context}, status_code=status_code)


def login_redirect(request: Request) -> RedirectResponse:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/login?next={target}", status_code=303)
