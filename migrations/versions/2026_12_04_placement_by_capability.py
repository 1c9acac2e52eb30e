"""placement by capability: job priority, needs and waiting reason; worker free disk and compute capability

Revision ID: b2c3d4e5f6a7
Revises: a1b2c3d4e5f6
Create Date: 2026-12-04 04:20:00

Jobs stored before this revision have no recorded needs (`{}`): placement then judges them by their method alone
(qlora still needs CUDA and bitsandbytes), as the estimate gave no memory verdict to keep.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "b2c3d4e5f6a7"
down_revision: str | Sequence[str] | None = "a1b2c3d4e5f6"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("priority", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("needs", sa.JSON(), nullable=False, server_default="{}"))
        batch.add_column(sa.Column("waiting_reason", sa.Text(), nullable=True))
        batch.add_column(sa.Column("placed_on", sa.String(length=200), nullable=True))
    with op.batch_alter_table("workers") as batch:
        batch.add_column(sa.Column("disk_free_bytes", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("compute_capability", sa.String(length=16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("workers") as batch:
        batch.drop_column("compute_capability")
        batch.drop_column("disk_free_bytes")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("placed_on")
        batch.drop_column("waiting_reason")
        batch.drop_column("needs")
        batch.drop_column("priority")
