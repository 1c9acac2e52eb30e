"""Alembic builds the schema from nothing, matches the ORM exactly, and downgrades cleanly, on both backends."""

from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import create_engine, inspect

from backend.migrate import alembic_config, downgrade, upgrade


@pytest.fixture(params=["sqlite", "postgres"])
def empty_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database with no tables at all (the other tests start from a schema migrated once per session)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'studio.db'}"
        return
    from tests.conftest import _require_services, server_resources

    _require_services()
    with server_resources() as services:
        yield services["STUDIO_DATABASE_URL"]


def test_upgrade_matches_models_and_downgrades(empty_database: str) -> None:
    url = empty_database
    engine = create_engine(url)
    assert inspect(engine).get_table_names() == []
    upgrade(url)
    command.check(alembic_config(url))  # raises if autogenerate would emit anything
    assert {"users", "jobs", "job_metrics", "datasets", "models"} <= set(inspect(engine).get_table_names())
    downgrade(url, "base")
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    upgrade(url)
    command.check(alembic_config(url))
    engine.dispose()
