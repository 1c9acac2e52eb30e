"""CSRF protection for cookie-authenticated writes: the request's Origin (or Referer) must be this app's own
origin, and it must echo the `studio_csrf` cookie (double submit) in an X-CSRF-Token header or a csrf_token form
field. A page on another port of the same host is same-site: SameSite cookies go along with its requests, and it
can even write cookies for this host, so the Origin check is what stops it; the token stops a request whose
Origin a browser left out. Requests with `Authorization: Bearer` are exempt: no browser adds that header to a
request another site makes."""

import hmac
import re
import secrets
from urllib.parse import parse_qs

from starlette.datastructures import Headers, MutableHeaders
from starlette.requests import cookie_parser
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from backend.auth.service import SESSION_COOKIE
from backend.security.origin import own_origin, parse_origin, show

CSRF_COOKIE = "studio_csrf"
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf_token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
# Logging in starts a session, so there is no token to echo yet; the Origin check still stops another site from
# logging a browser into an account of its choosing.
LOGIN_PATHS = frozenset({"/login", "/api/auth/login"})
# Native forms are small (logout, login); a larger urlencoded body is not read to look for a token.
MAX_FORM_BYTES = 64 * 1024
_TOKEN = re.compile(r"^[A-Za-z0-9_-]{32,128}$")


class CsrfRefused(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def new_token() -> str:
    return secrets.token_urlsafe(32)


def csrf_cookie(token: str) -> str:
    """The Set-Cookie value: readable by the page's scripts (they echo it), never sent by another site's pages."""
    # Lax, not Strict: a Strict cookie is not sent on an arrival from another site's link, so the page would hand
    # out a new token and the forms of the tabs already open would fail. Other sites cannot read it either way,
    # and a same-site page (another port of this host) is stopped by the Origin check.
    return f"{CSRF_COOKIE}={token}; Path=/; SameSite=Lax"


def check_origin(scope: Scope) -> None:
    """The request's Origin, or without one its Referer, is this app's own origin."""
    headers = Headers(scope=scope)
    own = own_origin(scope)
    if "origin" in headers:
        sent, what = headers["origin"], "Origin"
    elif "referer" in headers:
        sent, what = headers["referer"], "Referer"
    else:
        raise CsrfRefused("origin: the request has neither an Origin nor a Referer header; a browser sends one")
    if own is None or parse_origin(sent) != own:
        raise CsrfRefused(f"origin: {what} {sent[:200]!r} is not this studio's origin ({show(own)})")


def check_token(cookie: str | None, sent: str | None) -> None:
    """The token sent with the request equals the studio_csrf cookie."""
    if not cookie:
        raise CsrfRefused(f"token: no {CSRF_COOKIE} cookie; reload the page to get one")
    if not sent:
        raise CsrfRefused(f"token: missing; send the {CSRF_COOKIE} cookie's value as X-CSRF-Token (or {CSRF_FIELD})")
    if not hmac.compare_digest(cookie.encode(), sent.encode()):
        raise CsrfRefused(f"token: X-CSRF-Token / {CSRF_FIELD} does not match the {CSRF_COOKIE} cookie")


async def _read_body(receive: Receive) -> tuple[bytes, list[Message]]:
    """The body, up to MAX_FORM_BYTES, and the messages read: they are replayed to the app."""
    messages: list[Message] = []
    body = b""
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            return body, messages
        body += message.get("body", b"")
        if not message.get("more_body") or len(body) > MAX_FORM_BYTES:
            return body, messages


def _replay(messages: list[Message], receive: Receive) -> Receive:
    pending = list(messages)

    async def replayed() -> Message:
        return pending.pop(0) if pending else await receive()

    return replayed


def _is_form(headers: Headers) -> bool:
    return headers.get("content-type", "").split(";")[0].strip().lower() == "application/x-www-form-urlencoded"


class CsrfMiddleware:
    """Pure ASGI (not BaseHTTPMiddleware): server-sent event streams pass through unbuffered. Also hands every
    page a token: scope state `csrf_token` for its forms, and the cookie on HTML responses when it was missing."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        cookies = cookie_parser(headers.get("cookie", ""))
        cookie = cookies.get(CSRF_COOKIE)
        token = cookie if cookie and _TOKEN.match(cookie) else None
        try:
            receive = await self._check(scope, receive, headers, cookies, token)
        except CsrfRefused as refused:
            response = JSONResponse({"detail": f"CSRF check failed: {refused.message}", "code": "csrf"}, 403)
            await response(scope, receive, send)
            return
        scope.setdefault("state", {})["csrf_token"] = token or new_token()
        await self.app(scope, receive, self._hand_out(scope, send) if token is None else send)

    async def _check(
        self, scope: Scope, receive: Receive, headers: Headers, cookies: dict[str, str], token: str | None
    ) -> Receive:
        """Raises CsrfRefused; returns the receive channel to use (a form's body is read to find its token)."""
        if scope["method"] in SAFE_METHODS or headers.get("authorization", "").lower().startswith("bearer "):
            return receive
        if scope["path"] in LOGIN_PATHS:
            # A script logging in with a password sends neither header and has no cookie: nothing of a browser's
            # to borrow. A browser always sends Origin with a POST, so a forged login is still checked.
            if cookies or "origin" in headers or "referer" in headers:
                check_origin(scope)
            return receive
        if SESSION_COOKIE not in cookies:
            return receive  # not cookie-authenticated: nothing a forged request could borrow
        check_origin(scope)
        sent = headers.get(CSRF_HEADER)
        if sent is None and _is_form(headers):
            body, messages = await _read_body(receive)
            receive = _replay(messages, receive)
            sent = next(iter(parse_qs(body.decode("latin-1")).get(CSRF_FIELD, [])), None)
        check_token(token, sent)
        return receive

    def _hand_out(self, scope: Scope, send: Send) -> Send:
        """Set the cookie on a page (HTML) that was rendered without one, unless the response sets it itself
        (login). Only pages: the images and scripts a page loads in parallel would each set a different token."""

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                sets_it = any(v.startswith(f"{CSRF_COOKIE}=") for v in headers.getlist("set-cookie"))
                if headers.get("content-type", "").startswith("text/html") and not sets_it:
                    # The Secure flag, when due, is added by SecurityHeadersMiddleware (outermost) to every cookie.
                    headers.append("set-cookie", csrf_cookie(scope["state"]["csrf_token"]))
            await send(message)

        return sending
