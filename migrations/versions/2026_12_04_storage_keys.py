"""storage keys: dataset, model, artifact and resume-checkpoint rows hold keys relative to the storage root

Revision ID: c3d4e5f6a7b8
Revises: b2c3d4e5f6a7
Create Date: 2026-12-04 07:10:00

Before this revision those columns held absolute paths under the data directory; a key is the same path without
the data directory's prefix ("/srv/studio/datasets/1/ab-x.jsonl" becomes "datasets/1/ab-x.jsonl"), so the same
row names the same object in the data directory or in an S3 bucket. Paths outside the data directory (a model
directory registered where it is) stay absolute: local storage reads them where they are. The data directory is
the one `studio migrate` is configured with (`studio.data_dir` in the Alembic config, from STUDIO_DATA_DIR); run
without it, nothing is rewritten (absolute rows keep working with local storage).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import context, op

revision: str = "c3d4e5f6a7b8"
down_revision: str | Sequence[str] | None = "b2c3d4e5f6a7"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = (("datasets", "path"), ("models", "path"), ("artifacts", "path"), ("jobs", "resume_checkpoint"))


def _root() -> str | None:
    data_dir = context.config.get_main_option("studio.data_dir")
    return data_dir.rstrip("/") + "/" if data_dir else None


def upgrade() -> None:
    root = _root()
    if root is None:
        return
    for table, column in COLUMNS:
        op.execute(
            sa.text(
                f"UPDATE {table} SET {column} = substr({column}, :start) WHERE substr({column}, 1, :length) = :root"
            ).bindparams(start=len(root) + 1, length=len(root), root=root)
        )


def downgrade() -> None:
    root = _root()
    if root is None:
        return
    for table, column in COLUMNS:
        op.execute(
            sa.text(
                f"UPDATE {table} SET {column} = :root || {column} "
                f"WHERE {column} IS NOT NULL AND {column} != '' AND substr({column}, 1, 1) != '/'"
            ).bindparams(root=root)
        )
