"""GET /metrics: the API's Prometheus metrics, for a scraper rather than a browser session.

With `STUDIO_METRICS_TOKEN` set, a scrape must carry it as a bearer token (and nothing else opens the page). Without
it, only a direct request from this machine is answered: a loopback peer that no proxy forwarded (a reverse proxy
on the same host would otherwise turn every outside request into a local one).
"""

import hmac
import ipaddress

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from backend.config import get_settings
from backend.observability.metrics import api_registry

router = APIRouter(tags=["metrics"])
# One per process: the collectors read the current settings, engine and broker at each scrape.
REGISTRY = api_registry()
FORWARDED = ("forwarded", "x-forwarded-for", "x-real-ip")


def may_scrape(request: Request) -> bool:
    """Whether this request may read the metrics (see the module's docstring)."""
    token = get_settings().metrics_token
    if token:
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())
    if any(header in request.headers for header in FORWARDED):
        return False
    try:
        return request.client is not None and ipaddress.ip_address(request.client.host).is_loopback
    except ValueError:  # not an address (an in-process test client)
        return False


@router.get("/metrics", include_in_schema=False)
def metrics(request: Request) -> Response:
    """The Prometheus text exposition of the studio's state and this process's counters."""
    if not may_scrape(request):
        if get_settings().metrics_token:
            return _refused(401, "metrics need the bearer token STUDIO_METRICS_TOKEN", {"WWW-Authenticate": "Bearer"})
        return _refused(
            403, "metrics are served to this machine only; set STUDIO_METRICS_TOKEN to scrape from elsewhere"
        )
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)


def _refused(status: int, why: str, headers: dict[str, str] | None = None) -> Response:
    return Response(why + "\n", status_code=status, media_type="text/plain", headers=headers)
