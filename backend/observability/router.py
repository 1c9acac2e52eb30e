"""GET /metrics: the API's Prometheus metrics, for a scraper rather than a browser session.

A scrape must carry `STUDIO_METRICS_TOKEN` as a bearer token; without one set the page is closed. No address is
trusted instead: a reverse proxy or tunnel on the same host (nginx's plain `proxy_pass` adds no forwarding header)
would turn every outside request into a local one. A browser session or an API token does not open it either.
"""

import hmac

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from backend.config import get_settings
from backend.observability.metrics import api_registry

router = APIRouter(tags=["metrics"])
# One per process: the collectors read the current settings, engine and broker at each scrape.
REGISTRY = api_registry()


def may_scrape(request: Request) -> bool:
    """Whether this request may read the metrics (see the module's docstring)."""
    token = get_settings().metrics_token
    if not token:
        return False
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


@router.get("/metrics", include_in_schema=False)
def metrics(request: Request) -> Response:
    """The Prometheus text exposition of the studio's state and this process's counters."""
    if not may_scrape(request):
        if get_settings().metrics_token:
            return _refused(401, "metrics need the bearer token STUDIO_METRICS_TOKEN", {"WWW-Authenticate": "Bearer"})
        return _refused(403, "metrics are off: set STUDIO_METRICS_TOKEN and scrape with it as a bearer token")
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)


def _refused(status: int, why: str, headers: dict[str, str] | None = None) -> Response:
    return Response(why + "\n", status_code=status, media_type="text/plain", headers=headers)
