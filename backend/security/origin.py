"""The app's own origin as the browser sees it, and whether a request came over HTTPS."""

from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.types import Scope

from backend.config import get_settings

DEFAULT_PORTS = {"http": 80, "https": 443}
MAX_CLIENT_CHARS = 200  # the length of SecurityEvent.client; a forwarded header could be longer

Origin = tuple[str, str, int]


def _forwarded(headers: Headers, name: str) -> str | None:
    """The first entry of an X-Forwarded-* header, believed only behind a proxy that sets it (STUDIO_TRUST_PROXY):
    otherwise any client could claim any origin."""
    if not get_settings().trust_proxy:
        return None
    value = headers.get(name, "").split(",")[0].strip()
    return value or None


def request_scheme(scope: Scope) -> str:
    headers = Headers(scope=scope)
    scheme = _forwarded(headers, "x-forwarded-proto") or scope.get("scheme", "http")
    return "https" if scheme.lower() in ("https", "wss") else "http"


def is_https(scope: Scope) -> bool:
    return request_scheme(scope) == "https"


def parse_origin(value: str) -> Origin | None:
    """scheme://host[:port] (an Origin header, or the start of a Referer) as a comparable tuple; None when it is
    not an http(s) URL with a host ("null", garbage, a bad port)."""
    try:
        parts = urlsplit(value.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS or not parts.hostname:
        return None
    return scheme, parts.hostname.lower(), port or DEFAULT_PORTS[scheme]


def own_origin(scope: Scope) -> Origin | None:
    """Where the browser loaded this app from: the request's scheme and Host (or the proxy's forwarded ones)."""
    headers = Headers(scope=scope)
    host = _forwarded(headers, "x-forwarded-host") or headers.get("host")
    if not host:
        return None
    return parse_origin(f"{request_scheme(scope)}://{host}")


def client_host(scope: Scope) -> str:
    """Who sent the request: the first X-Forwarded-For entry behind a trusted proxy, else the peer's address."""
    forwarded = _forwarded(Headers(scope=scope), "x-forwarded-for")
    client = scope.get("client")
    host = forwarded or (str(client[0]) if client else "unknown")
    return host[:MAX_CLIENT_CHARS]


def show(origin: Origin | None) -> str:
    if origin is None:
        return "unknown"
    scheme, host, port = origin
    return f"{scheme}://{host}" + ("" if DEFAULT_PORTS[scheme] == port else f":{port}")
