"""Worker tests run against a throwaway data directory with an SQLite database built by Alembic.

The environment is switched to that directory only while a worker test (or a session fixture below)
runs, so tests elsewhere in the suite keep their own settings. The database, the seeded rows and the
pretrained tiny model are built once per session: the fine-tuning tests start from that model.
"""

from collections.abc import Iterator

import pytest
from sqlalchemy import select

from backend.db import Model, session_scope
from backend.migrate import upgrade
from tests.support import stored
from tests.workers.support import FIXTURES, PRETRAIN_HP, Pretrained, Seed, add_dataset, add_user, create_job, studio_env
from workers.tasks import run_job


@pytest.fixture(scope="session")
def seed(tmp_path_factory: pytest.TempPathFactory) -> Seed:
    """A migrated database with one user and the two fixture datasets."""
    data_dir = tmp_path_factory.mktemp("studio")
    with studio_env(data_dir):
        upgrade()
        user_id = add_user("worker-tests@example.com")
        return Seed(
            data_dir=data_dir,
            user_id=user_id,
            text_dataset_id=add_dataset(user_id, FIXTURES / "fables.txt"),
            alpaca_dataset_id=add_dataset(user_id, FIXTURES / "tasks_alpaca.json"),
        )


@pytest.fixture(autouse=True)
def worker_env(seed: Seed) -> Iterator[Seed]:
    """Every worker test runs with the session's data directory and database."""
    with studio_env(seed.data_dir):
        yield seed


@pytest.fixture(scope="session")
def pretrained(seed: Seed) -> Pretrained:
    """The tiny preset pretrained for 60 steps on the fables: the base model of the fine-tuning tests."""
    with studio_env(seed.data_dir):
        job_id = create_job(seed, kind="pretrain", architecture="tiny", name="tiny-fables", hyperparameters=PRETRAIN_HP)
        status = run_job(job_id)
        assert status == "succeeded", status
        with session_scope() as s:
            model = s.scalars(select(Model).where(Model.job_id == job_id)).one()
            return Pretrained(job_id=job_id, model_id=model.id, model_path=stored(model.path))
