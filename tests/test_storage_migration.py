"""The storage-keys migration: rows that held absolute paths under the data directory hold keys after it, paths
elsewhere stay as they were, and the downgrade puts the data directory back in front."""

from pathlib import Path

import pytest
from sqlalchemy import MetaData, Table, create_engine, text

from backend.migrate import downgrade, upgrade
from tests.support import reset_process_state
from tests.test_migrations import _row

BEFORE, KEYS = "b2c3d4e5f6a7", "c3d4e5f6a7b8"


def test_absolute_paths_under_the_data_dir_become_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = (tmp_path / "data").resolve()
    monkeypatch.setenv("STUDIO_DATA_DIR", str(data))
    reset_process_state()
    url = f"sqlite:///{tmp_path / 'studio.db'}"
    upgrade(url, BEFORE)
    engine = create_engine(url)
    meta = MetaData()
    users, datasets, models, jobs, artifacts = (
        Table(n, meta, autoload_with=engine) for n in ("users", "datasets", "models", "jobs", "artifacts")
    )
    with engine.begin() as conn:
        conn.execute(users.insert().values(_row(users, id=1, email="a@b.c")))
        conn.execute(datasets.insert().values(_row(datasets, id=1, owner_id=1, path=f"{data}/datasets/1/ab-x.jsonl")))
        conn.execute(models.insert().values(_row(models, id=1, owner_id=1, path=f"{data}/models/1")))
        conn.execute(
            models.insert().values(_row(models, id=2, owner_id=1, path="/srv/hf/llama"))
        )  # registered where it is
        conn.execute(models.insert().values(_row(models, id=3, owner_id=1, path="")))  # an import not begun
        checkpoint = f"{data}/jobs/1/checkpoints/checkpoint-10"
        conn.execute(jobs.insert().values(_row(jobs, id=1, owner_id=1, dataset_id=1, resume_checkpoint=checkpoint)))
        conn.execute(jobs.insert().values(_row(jobs, id=2, owner_id=1, dataset_id=1, resume_checkpoint=None)))
        conn.execute(
            artifacts.insert().values(_row(artifacts, id=1, job_id=1, owner_id=1, path=f"{data}/jobs/1/model.zip"))
        )
        # A data directory whose name merely starts like this one's is another directory.
        conn.execute(artifacts.insert().values(_row(artifacts, id=2, job_id=1, owner_id=1, path=f"{data}-old/x.zip")))

    def rows() -> list[object]:
        with engine.connect() as conn:
            return [
                *conn.execute(text("SELECT path FROM datasets")).scalars(),
                *conn.execute(text("SELECT path FROM models ORDER BY id")).scalars(),
                *conn.execute(text("SELECT resume_checkpoint FROM jobs ORDER BY id")).scalars(),
                *conn.execute(text("SELECT path FROM artifacts ORDER BY id")).scalars(),
            ]

    absolute = rows()
    upgrade(url, KEYS)
    assert rows() == [
        "datasets/1/ab-x.jsonl",
        "models/1",
        "/srv/hf/llama",
        "",
        "jobs/1/checkpoints/checkpoint-10",
        None,
        "jobs/1/model.zip",
        f"{data}-old/x.zip",
    ]
    downgrade(url, BEFORE)
    assert rows() == absolute
    engine.dispose()
    reset_process_state()
