"""Declarative base, engine and sessions. One engine per process (re-made after a fork)."""

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import DateTime, Engine, MetaData, create_engine, event
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.types import TypeDecorator

from backend.config import get_settings

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware datetimes on every backend (SQLite drops the offset)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


_engine: tuple[int, str, Engine] | None = None
_engine_lock = threading.Lock()


def _fresh_lock_in_child() -> None:
    # A fork while another thread held the lock would leave the child's copy locked forever.
    global _engine_lock
    _engine_lock = threading.Lock()


os.register_at_fork(after_in_child=_fresh_lock_in_child)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # WAL lets the API read while a worker writes; busy_timeout waits out short write locks.
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    # A database that went away must fail a connection in seconds (the API answers 503, a worker keeps its writes
    # in memory), not hang a request or a training step on a dead socket.
    connect_args = {"connect_timeout": 5, "keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5,
                    "keepalives_count": 3, "tcp_user_timeout": 15000}  # fmt: skip
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20, connect_args=connect_args)


def get_engine() -> Engine:
    """The process's engine; a forked worker child gets a fresh one instead of sharing sockets."""
    global _engine
    url = get_settings().database_url
    with _engine_lock:
        current = _engine
        if current is not None and current[0] != os.getpid():
            # Inherited across a fork: drop the pool without closing the parent's sockets.
            current[2].dispose(close=False)
            current = None
        if current is None or current[1] != url:
            # The engine for *this* settings' URL, never whatever another thread put in the global meanwhile.
            current = (os.getpid(), url, make_engine(url))
        _engine = current
        return current[2]


def reset_engine() -> None:
    """Forget the engine (settings changed, or this is a forked child that must not reuse sockets)."""
    global _engine
    with _engine_lock:
        current, _engine = _engine, None
    if current is not None:
        current[2].dispose(close=current[0] == os.getpid())


def session_factory() -> sessionmaker[Session]:
    return sessionmaker(bind=get_engine(), expire_on_commit=False)


@contextmanager
def session_scope() -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    session = session_factory()()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
