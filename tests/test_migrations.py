"""Alembic builds the schema, matches the ORM exactly, and downgrades cleanly, on both backends."""

import pytest
from alembic import command
from sqlalchemy import create_engine, inspect

from backend.migrate import alembic_config, downgrade, upgrade


@pytest.mark.usefixtures("app_env")
def test_upgrade_matches_models_and_downgrades(app_env: dict[str, str]) -> None:
    from backend.config import get_settings

    url = get_settings().database_url
    upgrade(url)
    command.check(alembic_config(url))  # raises if autogenerate would emit anything
    engine = create_engine(url)
    assert {"users", "jobs", "job_metrics", "datasets", "models"} <= set(inspect(engine).get_table_names())
    downgrade(url, "base")
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    upgrade(url)
    engine.dispose()
