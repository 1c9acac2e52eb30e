"""Shared fixtures: databases on each backend, in-process apps and live studio processes.

Backends: `sqlite` (the embedded default: SQLite + kombu's SQLAlchemy broker) and `postgres` (PostgreSQL +
Redis, a database and a Redis db number of this test run's own). Schemas are built by Alembic only, once per
backend per session: each test gets a copy of a migrated SQLite file, or the PostgreSQL tables emptied
(tests/test_migrations.py migrates empty databases for real).

Studios: `shared_studio` is a warm studio per backend for the whole session (`studio up` on SQLite; `studio api` +
`studio worker` + `studio worker --analysis` on PostgreSQL + Redis), seen by a fresh user per test. Tests that stop
or restart processes, or need settings of their own, start their own with `studio` (or `StudioProcess`).
"""

import functools
import os
import shutil
import tempfile
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest
import redis

from tests.support import StudioProcess, password_hash, reset_process_state

PG_ADMIN_URL = os.environ.get("STUDIO_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("STUDIO_TEST_REDIS", "redis://127.0.0.1:6379")
FIXTURES = Path(__file__).parent / "fixtures"
IN_CI = os.environ.get("CI") == "true"
# The warm studios never reach the Hugging Face Hub: nothing listens on port 9, so a Hub import fails at once.
OFFLINE = {"STUDIO_HUB_ENDPOINT": "http://127.0.0.1:9"}


def _services_up() -> str | None:
    try:
        psycopg.connect(PG_ADMIN_URL, connect_timeout=3).close()
        redis.Redis.from_url(REDIS_URL, socket_timeout=3).ping()
    except Exception as exc:
        return str(exc)
    return None


def _require_services() -> None:
    problem = _services_up()
    if problem:
        if IN_CI:
            pytest.fail(f"PostgreSQL/Redis are required in CI: {problem}")
        pytest.skip(f"PostgreSQL/Redis not reachable: {problem}")


@contextmanager
def server_resources() -> Iterator[dict[str, str]]:
    """A fresh PostgreSQL database and a Redis db number, as studio settings; both dropped on the way out."""
    name = f"studio_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    # A Redis db number (1..15) per use so concurrent runs and other tenants don't collide.
    admin = redis.Redis.from_url(f"{REDIS_URL}/0")
    db = 1 + int(admin.incr("studio:test:db-counter")) % 15
    r = redis.Redis.from_url(f"{REDIS_URL}/{db}")
    r.flushdb()
    base = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
    try:
        yield {
            "STUDIO_DATABASE_URL": f"{base}/{name}",
            "STUDIO_BROKER_URL": f"{REDIS_URL}/{db}",
            "STUDIO_REDIS_URL": f"{REDIS_URL}/{db}",
        }
    finally:
        r.flushdb()
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def server_services() -> Iterator[dict[str, str]]:
    """This test run's PostgreSQL database (at head, emptied per test) and Redis db number (flushed per test)."""
    _require_services()
    from backend.migrate import upgrade

    with server_resources() as services:
        upgrade(services["STUDIO_DATABASE_URL"])
        yield services


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An SQLite database at head, built once by Alembic; each test gets a copy."""
    from backend.migrate import upgrade

    path = tmp_path_factory.mktemp("schema") / "studio.db"
    upgrade(f"sqlite:///{path}")  # closes its connections, so the write-ahead log is folded into the file
    return path


@pytest.fixture(params=["sqlite", "postgres"])
def backend_env(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    """Environment for one studio on the given backend, its database at head and empty."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    env = {"STUDIO_DATA_DIR": str(data_dir)}
    if request.param == "postgres":
        services = request.getfixturevalue("server_services")
        env.update(services)
        empty_postgres(services["STUDIO_DATABASE_URL"])
        redis.Redis.from_url(services["STUDIO_BROKER_URL"]).flushdb()
    else:
        shutil.copyfile(request.getfixturevalue("sqlite_template"), data_dir / "studio.db")
    return env


def empty_postgres(url: str) -> None:
    """Every row deleted and every id sequence restarted at 1; the schema (and Alembic's version row) stays.
    DELETE with the foreign-key triggers off is a few times faster than TRUNCATE on tables this small."""
    plain = url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(plain, autocommit=True) as conn:
        conn.execute(_emptying_statement(plain))


@functools.cache
def _emptying_statement(url: str) -> str:
    with psycopg.connect(url) as conn:
        tables = conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename <> 'alembic_version'"
        ).fetchall()
        sequences = conn.execute("SELECT sequencename FROM pg_sequences WHERE schemaname = 'public'").fetchall()
    return "; ".join(
        [
            "BEGIN",
            "SET LOCAL lock_timeout = '30s'",  # a leaked open transaction fails the test instead of hanging it
            "SET LOCAL session_replication_role = replica",  # no foreign-key checks: every row goes
            *(f'DELETE FROM "{name}"' for (name,) in tables),
            *(f'ALTER SEQUENCE "{name}" RESTART' for (name,) in sequences),
            "COMMIT",
        ]
    )


@pytest.fixture
def app_env(backend_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """This process configured for `backend_env` (schema at head, no rows)."""
    for key, value in backend_env.items():
        monkeypatch.setenv(key, value)
    reset_process_state()
    yield backend_env
    reset_process_state()


@pytest.fixture
def client(app_env: dict[str, str]) -> Iterator["object"]:
    """An in-process TestClient logged in as owner@example.com (password "password123", not an admin) with a
    bearer token."""
    from fastapi.testclient import TestClient

    from backend.auth.service import issue_token
    from backend.db import User, session_scope
    from backend.main import create_app

    with session_scope() as s:
        user = User(email="owner@example.com", password_hash=password_hash("password123"), is_admin=False)
        s.add(user)
        s.flush()
        token = issue_token(s, user=user, kind="api")
    with TestClient(create_app()) as c:
        c.headers["Authorization"] = f"Bearer {token}"
        yield c


@pytest.fixture
def studio(backend_env: dict[str, str], tmp_path: Path) -> Iterator[StudioProcess]:
    """A studio of the test's own, for tests that stop or restart its processes: `studio up` in embedded mode,
    `studio api` + a separate `studio worker` in server mode. Others use `shared_studio`."""
    with StudioProcess(backend_env, log_dir=tmp_path / "logs") as proc:
        yield proc


class WarmStudio:
    """A session's warm studio, started in a thread of its own as soon as the tests are collected: it boots (three
    processes importing torch) on the second core while the in-process tests keep the first one busy."""

    def __init__(self, backend: str) -> None:
        tmp = Path(tempfile.mkdtemp(prefix=f"studio-warm-{backend}-"))
        self.dir = tmp
        self.resources = server_resources() if backend == "postgres" else None
        services = self.resources.__enter__() if self.resources else {}
        # Made here, in the main thread before any test runs: StudioProcess copies os.environ, which tests patch.
        self.proc = StudioProcess({"STUDIO_DATA_DIR": str(tmp / "data"), **services, **OFFLINE}, log_dir=tmp / "logs")
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._start, name=f"warm-{backend}-studio", daemon=True)
        self.thread.start()

    def _start(self) -> None:
        try:
            self.proc.__enter__()
        except BaseException as exc:
            self.error = exc

    def ready(self) -> StudioProcess:
        self.thread.join()
        if self.error:
            raise self.error
        return self.proc

    def close(self, keep_logs: bool) -> None:
        self.thread.join()
        self.proc.kill()  # the session is over: no job to checkpoint, no need to wait out a graceful shutdown
        if self.resources:
            self.resources.__exit__(None, None, None)
        if keep_logs:
            shutil.rmtree(self.dir / "data", ignore_errors=True)
        else:
            shutil.rmtree(self.dir, ignore_errors=True)


_warm: dict[str, WarmStudio] = {}


def pytest_collection_finish(session: pytest.Session) -> None:
    """Start the warm studios the collected tests will use (none for a run that needs none)."""
    if session.config.option.collectonly:
        return
    wanted = set()
    for item in session.items:
        names = getattr(item, "fixturenames", ())
        if "embedded_studio" in names:
            wanted.add("sqlite")
        if "server_studio" in names:
            wanted.add("postgres")
        if "shared_studio" in names:
            wanted.add(item.callspec.params["shared_studio"])  # type: ignore[attr-defined]
    if "postgres" in wanted and _services_up():
        wanted.discard("postgres")  # the fixture skips (or fails in CI) with the reason
    for backend in sorted(wanted):
        _warm[backend] = WarmStudio(backend)


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Stop the warm studios; after a failure their logs stay (in /tmp/studio-warm-*/logs)."""
    while _warm:
        _warm.popitem()[1].close(keep_logs=bool(session.testsfailed))


def _warm_studio(backend: str) -> StudioProcess:
    if backend not in _warm:  # a test asked for it after collection (getfixturevalue): start it now
        _warm[backend] = WarmStudio(backend)
    return _warm[backend].ready()


@pytest.fixture(scope="session")
def embedded_studio() -> StudioProcess:
    """`studio up` on SQLite, warm for the whole session (use it through `shared_studio` or `as_new_user`)."""
    return _warm_studio("sqlite")


@pytest.fixture(scope="session")
def server_studio() -> StudioProcess:
    """`studio api` + `studio worker` + `studio worker --analysis` on PostgreSQL and Redis of their own (not the
    database the in-process tests empty), warm for the whole session."""
    _require_services()
    return _warm_studio("postgres")


@pytest.fixture(params=["sqlite", "postgres"])
def shared_studio(request: pytest.FixtureRequest) -> Iterator[StudioProcess]:
    """The session's warm studio on each backend, seen by a fresh user: the test sees only what it made. Its
    unfinished jobs are cancelled afterwards, so the next test finds the worker idle. One backend only:
    `@pytest.mark.parametrize("shared_studio", ["postgres"], indirect=True)`."""
    warm = request.getfixturevalue("embedded_studio" if request.param == "sqlite" else "server_studio")
    warm.wait_healthy(timeout=10)  # a process that died under an earlier test fails here, with its logs
    studio = warm.as_new_user()
    yield studio
    studio.settle()
