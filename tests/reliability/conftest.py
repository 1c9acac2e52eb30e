"""Fixtures of the fault tests: a Redis server and a PostgreSQL database of each test's own."""

from collections.abc import Iterator

import pytest

from tests.reliability.faults import RedisServer, fresh_database


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    yield server
    server.kill()


@pytest.fixture
def database() -> Iterator[str]:
    with fresh_database() as url:
        yield url
