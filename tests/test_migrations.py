"""Alembic builds the schema from nothing, matches the ORM exactly, and downgrades cleanly, on both backends."""

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    inspect,
    text,
)

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


def _row(table: Table, **values: object) -> dict[str, object]:
    """`values` plus a plain value for every other NOT NULL column without a server default (whatever the
    schema held at that revision)."""
    filler = {Integer: 0, BigInteger: 0, String: "x", Text: "x", Boolean: False, DateTime: datetime.now(UTC), JSON: {}}
    row = dict(values)
    for column in table.columns:
        if column.name in row or column.nullable or column.server_default is not None or column.primary_key:
            continue
        row[column.name] = next(v for t, v in filler.items() if isinstance(column.type, t))
    return row


def test_jobs_stored_with_flat_method_settings_keep_loading(tmp_path: Path) -> None:
    """Before the method registry, every job stored LoRA, freeze, DPO and KTO settings in `hyperparameters`; the
    migration moves those of the job's own method and objective to method_config / objective_config, and the
    downgrade puts them back."""
    url = f"sqlite:///{tmp_path / 'studio.db'}"
    upgrade(url, "7c1d2e3f4a5b")
    engine = create_engine(url)
    meta = MetaData()
    users, datasets, jobs, events = (
        Table(name, meta, autoload_with=engine) for name in ("users", "datasets", "jobs", "job_events")
    )
    flat = {
        "max_steps": 10,
        "lora_r": 16,
        "lora_alpha": 32,
        "lora_target_modules": ["q_proj"],
        "freeze_trainable_layers": 3,
        "dpo_beta": 0.3,
        "kto_beta": 0.1,
        "kto_desirable_weight": 1.0,
        "kto_undesirable_weight": 1.0,
    }
    with engine.begin() as conn:
        conn.execute(users.insert().values(_row(users, id=1, email="a@b.c")))
        conn.execute(datasets.insert().values(_row(datasets, id=1, owner_id=1)))
        for job_id, method, objective in ((1, "lora", "dpo"), (2, "freeze", "kto"), (3, None, "causal_lm")):
            values = _row(jobs, id=job_id, owner_id=1, dataset_id=1, kind="finetune", method=method)
            conn.execute(jobs.insert().values({**values, "objective": objective, "hyperparameters": flat}))
        conn.execute(events.insert().values(_row(events, job_id=1, message="queued")))
    upgrade(url)
    with engine.connect() as conn:
        rows = {r.id: r for r in conn.execute(text("SELECT * FROM jobs ORDER BY id"))}
    with engine.connect() as conn:  # the upgrade copied `jobs` too
        assert conn.execute(text("SELECT count(*) FROM job_events")).scalar_one() == 1
    loaded = {
        i: (json.loads(r.hyperparameters), json.loads(r.method_config), json.loads(r.objective_config))
        for i, r in rows.items()
    }
    assert loaded[1] == (
        {"max_steps": 10},
        {"r": 16, "lora_alpha": 32, "target_modules": ["q_proj"]},
        {"beta": 0.3},
    )
    assert loaded[2] == (
        {"max_steps": 10},
        {"trainable_layers": 3},
        {"beta": 0.1, "desirable_weight": 1.0, "undesirable_weight": 1.0},
    )
    assert loaded[3] == ({"max_steps": 10}, {}, {})
    # What the workers and the API read from such a row validates with today's classes.
    from backend.method import registry

    assert registry.method("lora").settings.model_validate(loaded[1][1]).r == 16  # type: ignore[attr-defined]
    downgrade(url, "7c1d2e3f4a5b")
    with engine.connect() as conn:
        back = json.loads(conn.execute(text("SELECT hyperparameters FROM jobs WHERE id = 1")).scalar_one())
        # SQLite alters `jobs` by copying it: the rows that point at a job (its log) must survive that.
        logged = conn.execute(text("SELECT count(*) FROM job_events")).scalar_one()
    assert back == {"max_steps": 10, "lora_r": 16, "lora_alpha": 32, "lora_target_modules": ["q_proj"], "dpo_beta": 0.3}
    assert logged == 1
    engine.dispose()
