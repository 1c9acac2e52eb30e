"""metric rollups for downsampled charts, job_metrics (job_id, step) index

Revision ID: a1b2c3d4e5f6
Revises: 9e3f4a5b6c7d
Create Date: 2026-12-04 00:00:00

Jobs stored before this revision get their rollups the first time a chart reads them
(backend/db/metric_rollup.py chart_points), so the upgrade itself reads no metric points.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "a1b2c3d4e5f6"
down_revision: str | Sequence[str] | None = "9e3f4a5b6c7d"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

KINDS = ("first", "min", "max", "last")


def upgrade() -> None:
    points = [
        column
        for kind in KINDS
        for column in (
            sa.Column(f"{kind}_value", sa.Double(), nullable=False),
            sa.Column(f"{kind}_id", sa.Integer(), nullable=False),
            sa.Column(f"{kind}_step", sa.Integer(), nullable=False),
            sa.Column(f"{kind}_at", sa.Double(), nullable=False),
        )
    ]
    op.create_table(
        "job_metric_rollups",
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("level", sa.Integer(), nullable=False),
        sa.Column("bucket", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=200), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        *points,
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_job_metric_rollups_job_id_jobs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("job_id", "level", "bucket", "key", name=op.f("pk_job_metric_rollups")),
    )
    op.create_index("ix_job_metrics_job_id_step", "job_metrics", ["job_id", "step"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_job_metrics_job_id_step", table_name="job_metrics")
    op.drop_table("job_metric_rollups")
