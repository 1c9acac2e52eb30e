"""Shared fixtures: a fresh database per test run on each backend, in-process apps and live studio processes.

Backends: `sqlite` (the embedded default: SQLite + kombu's SQLAlchemy broker) and `postgres` (PostgreSQL +
Redis, each test run with its own database and Redis db number). Schemas are built by Alembic only.
"""

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis

from tests.support import StudioProcess, reset_process_state

PG_ADMIN_URL = os.environ.get("STUDIO_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("STUDIO_TEST_REDIS", "redis://127.0.0.1:6379")
FIXTURES = Path(__file__).parent / "fixtures"
IN_CI = os.environ.get("CI") == "true"


def _services_up() -> str | None:
    try:
        psycopg.connect(PG_ADMIN_URL, connect_timeout=3).close()
        redis.Redis.from_url(REDIS_URL, socket_timeout=3).ping()
    except Exception as exc:
        return str(exc)
    return None


@pytest.fixture(scope="session")
def server_services() -> Iterator[dict[str, str]]:
    """A PostgreSQL database and a Redis db number of this test run's own, dropped at the end."""
    problem = _services_up()
    if problem:
        if IN_CI:
            pytest.fail(f"PostgreSQL/Redis are required in CI: {problem}")
        pytest.skip(f"PostgreSQL/Redis not reachable: {problem}")
    name = f"studio_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    # Allocate a Redis db number (1..15) per run so concurrent runs and other tenants don't collide.
    admin = redis.Redis.from_url(f"{REDIS_URL}/0")
    db = 1 + int(admin.incr("studio:test:db-counter")) % 15
    r = redis.Redis.from_url(f"{REDIS_URL}/{db}")
    r.flushdb()
    base = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
    yield {
        "STUDIO_DATABASE_URL": f"{base}/{name}",
        "STUDIO_BROKER_URL": f"{REDIS_URL}/{db}",
        "STUDIO_REDIS_URL": f"{REDIS_URL}/{db}",
    }
    r.flushdb()
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgres"])
def backend_env(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    """Environment for one studio on the given backend; the PostgreSQL one is emptied per test."""
    env = {"STUDIO_DATA_DIR": str(tmp_path / "data")}
    if request.param == "postgres":
        services = request.getfixturevalue("server_services")
        env.update(services)
        _empty_postgres(services["STUDIO_DATABASE_URL"])
        redis.Redis.from_url(services["STUDIO_BROKER_URL"]).flushdb()
    return env


def _empty_postgres(url: str) -> None:
    plain = url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(plain, autocommit=True) as conn:
        conn.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public")


@pytest.fixture
def app_env(backend_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """This process configured for `backend_env`, schema at head (via Alembic)."""
    for key, value in backend_env.items():
        monkeypatch.setenv(key, value)
    reset_process_state()
    from backend.migrate import upgrade

    upgrade()
    yield backend_env
    reset_process_state()


@pytest.fixture
def client(app_env: dict[str, str]) -> Iterator["object"]:
    """An in-process TestClient logged in as a fresh admin (bearer token)."""
    from fastapi.testclient import TestClient

    from backend.auth.service import create_user, issue_token
    from backend.db import session_scope
    from backend.main import create_app

    with session_scope() as s:
        user = create_user(s, email="owner@example.com", password="password123", is_admin=False)
        token = issue_token(s, user=user, kind="api")
    with TestClient(create_app()) as c:
        c.headers["Authorization"] = f"Bearer {token}"
        yield c


@pytest.fixture
def studio(backend_env: dict[str, str], tmp_path: Path) -> Iterator[StudioProcess]:
    """A running studio: `studio up` in embedded mode, `studio api` + a separate `studio worker` in server mode."""
    with StudioProcess(backend_env, log_dir=tmp_path / "logs") as proc:
        yield proc
