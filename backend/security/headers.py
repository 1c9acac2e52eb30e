"""Security headers on every response, and the Secure flag on every cookie of a request that came over HTTPS."""

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from backend.config import get_settings
from backend.security.origin import is_https

# Scripts only from files of this origin (JSON data blocks are not scripts); inline styles stay allowed (the pages
# set widths and colours from JS). No framing at all: a same-site page could otherwise overlay the studio.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'self'; form-action 'self'; object-src 'none'"
)
SECURITY_HEADERS = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
}


def _secure(cookie: str) -> str:
    if any(part.strip().lower() == "secure" for part in cookie.split(";")[1:]):
        return cookie
    return f"{cookie}; Secure"


class SecurityHeadersMiddleware:
    """Pure ASGI (not BaseHTTPMiddleware): server-sent event streams keep streaming. A header the route set
    itself wins."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    if name not in headers:
                        headers[name] = value
                cookies = headers.getlist("set-cookie")
                if cookies and (is_https(scope) or get_settings().cookie_secure):
                    del headers["set-cookie"]
                    for cookie in cookies:
                        headers.append("set-cookie", _secure(cookie))
            await send(message)

        await self.app(scope, receive, sending)
