"""create_app(): API routers, HTML pages, static files and the lifespan (event fan-out, lease reaper)."""

import asyncio
import contextlib
import gc
import logging
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from anyio import to_thread
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException as StarletteHTTPException

from backend.auth import events_router as security_events_router
from backend.auth import pages as auth_pages
from backend.auth import router as auth_router
from backend.auth.service import SESSION_COOKIE, user_for_token
from backend.config import REPO_ROOT, get_settings
from backend.dataset import analysis_router, upload_router
from backend.dataset import pages as dataset_pages
from backend.dataset import router as dataset_router
from backend.db import User, get_engine, session_scope
from backend.errors import DomainError
from backend.events import Broadcaster
from backend.export import router as export_router
from backend.job import pages as job_pages
from backend.job import router as job_router
from backend.method import pages as method_pages
from backend.method import router as method_router
from backend.model import pages as model_pages
from backend.model import router as model_router
from backend.observability import router as metrics_router
from backend.observability.metrics import count_expiries
from backend.openai_compat import router as openai_router
from backend.playground import pages as playground_pages
from backend.playground import router as playground_router
from backend.security import docs as security_docs
from backend.security.csrf import CsrfMiddleware
from backend.security.headers import SecurityHeadersMiddleware
from backend.web import LoginRequired, login_redirect, render
from backend.work.reaper import sweep
from backend.work.retry import transient
from backend.worker import pages as worker_pages
from backend.worker import router as worker_router

log = logging.getLogger(__name__)


async def _reaper() -> None:
    """Recover background work whose worker was lost, and re-send work whose message was (backend.work.reaper)."""
    while True:
        try:
            swept = await to_thread.run_sync(sweep)
            count_expiries(swept.requeued, swept.ended)
            if swept:
                log.warning("recovered background work: %s", swept)
        except Exception as exc:
            if transient(exc):
                log.warning("lease reaper: database unreachable (%s)", type(exc).__name__)
            else:
                log.exception("lease reaper failed")
        await asyncio.sleep(get_settings().reap_interval_seconds)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    broadcaster: Broadcaster = app.state.broadcaster
    await broadcaster.start()
    reaper = asyncio.create_task(_reaper())
    # What is alive once the app has started (modules, routes, mappers, settings) lives as long as the process:
    # frozen, it is out of the collector's walks. A request that allocates a lot (a long run's chart: ~10,000
    # rows) triggers a full collection every few calls; walking the imports too made each one ~250 ms.
    if not gc.get_freeze_count():  # once per process: a test process starts hundreds of apps
        gc.collect()
        gc.freeze()
    yield
    reaper.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await reaper
    await broadcaster.stop()


async def _domain_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, DomainError)
    if request.url.path.startswith("/api"):
        return JSONResponse({"detail": exc.message, **exc.details}, status_code=exc.status_code, headers=exc.headers)
    return render(request, "error.html", _page_user(request), status_code=exc.status_code, message=exc.message)


def _page_user(request: Request) -> User | None:
    """The logged-in user for an error page's header (best effort: the error may be about the database)."""
    secret = request.cookies.get(SESSION_COOKIE)
    if not secret:
        return None
    try:
        with session_scope() as s:
            return user_for_token(s, secret)
    except Exception:
        return None


def _json_safe(value: Any) -> Any:
    """Validation errors echo the input; NaN/Infinity (accepted by Python's JSON parser) cannot go back out."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


async def _database_error(request: Request, exc: Exception) -> Response:
    """The database is unreachable (restarting, failing over, network): a 503 that says so, never a 500. A
    database error that is not about reaching it is a bug, and stays one."""
    if not transient(exc):
        raise exc
    log.warning("database unreachable: %s", exc)
    message = "the database is unreachable; try again in a moment"
    if request.url.path.startswith("/api"):
        return JSONResponse({"detail": message, "service": "database"}, status_code=503, headers={"Retry-After": "5"})
    return render(request, "error.html", None, status_code=503, message=message)


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    return JSONResponse({"detail": _json_safe(jsonable_encoder(exc.errors()))}, status_code=422)


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own errors (an unknown address, a wrong method): JSON for the API and static files, the error
    page for a person who typed or followed a bad link."""
    assert isinstance(exc, StarletteHTTPException)
    if request.url.path.startswith(("/api", "/static")):
        return await http_exception_handler(request, exc)
    message = f"There is no page at {request.url.path[:200]}" if exc.status_code == 404 else str(exc.detail)
    return render(request, "error.html", _page_user(request), status_code=exc.status_code, message=message)


async def _login_required(request: Request, exc: Exception) -> Response:
    return login_redirect(request)


def create_app() -> FastAPI:
    settings = get_settings()
    app = FastAPI(title="Fine-Tuning Studio", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.broadcaster = Broadcaster(settings.redis_url)
    app.add_exception_handler(DomainError, _domain_error)
    app.add_exception_handler(LoginRequired, _login_required)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(DBAPIError, _database_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)

    @app.get("/api/health", tags=["health"])
    def health() -> JSONResponse:
        """Liveness and the database: 200 when it answers, 503 naming it when it does not."""
        mode = "embedded" if settings.embedded else "server"
        try:
            with get_engine().connect() as conn:
                conn.execute(text("SELECT 1"))
        except Exception as exc:
            if not transient(exc):
                raise
            body = {"status": "unavailable", "mode": mode, "database": f"unreachable ({type(exc).__name__})"}
            return JSONResponse(body, status_code=503, headers={"Retry-After": "5"})
        return JSONResponse({"status": "ok", "mode": mode, "database": "ok"})

    routers = (
        auth_router,
        security_events_router,
        dataset_router,
        upload_router,
        analysis_router,
        model_router,
        job_router,
        method_router,
        worker_router,
        playground_router,
        export_router,
        metrics_router,
        openai_router,  # /v1, last: its catch-all answers unknown /v1 addresses
    )
    for module in routers:
        app.include_router(module.router)
    for module in (auth_pages, dataset_pages, model_pages, job_pages, method_pages, worker_pages, playground_pages):
        app.include_router(module.router)
    app.mount("/static", StaticFiles(directory=str(REPO_ROOT / "frontend" / "static")), name="static")
    app.include_router(security_docs.router)
    app.add_middleware(CsrfMiddleware)
    app.add_middleware(SecurityHeadersMiddleware)  # added last = outermost: also on the CSRF refusals
    return app
