"""one lease for background work: attempt (fencing token), lease holder, heartbeat and send time on every kind

Revision ID: 7c1d2e3f4a5b
Revises: 521545bde82b
Create Date: 2026-12-03 13:00:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "7c1d2e3f4a5b"
down_revision: str | Sequence[str] | None = "521545bde82b"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Tables of background work that had no lease of their own (jobs had one: worker + heartbeat_at).
LEASED = ("exports", "generations", "dataset_analyses", "models")


def _lease_columns(batch_op: object, *, heartbeat: bool) -> None:
    add = batch_op.add_column  # type: ignore[attr-defined]
    add(sa.Column("attempt_base", sa.Integer(), server_default="0", nullable=False))
    add(sa.Column("lease_worker", sa.String(length=200), nullable=True))
    add(sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True))
    if heartbeat:
        add(sa.Column("attempt", sa.Integer(), server_default="0", nullable=False))
        add(sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True))


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.alter_column("attempts", new_column_name="attempt", server_default="0")
        _lease_columns(batch_op, heartbeat=False)
    for table in LEASED:
        with op.batch_alter_table(table, schema=None) as batch_op:
            _lease_columns(batch_op, heartbeat=True)
    # `attempts` counted a person's resumes: the automatic retries count from there.
    op.execute("UPDATE jobs SET attempt_base = attempt")
    # Work running at the upgrade gets a holder, so the reaper recovers it once its (old) heartbeat is stale.
    op.execute("UPDATE jobs SET lease_worker = coalesce(worker, 'unknown') WHERE status = 'running'")
    for table in ("exports", "generations", "dataset_analyses"):
        op.execute(f"UPDATE {table} SET lease_worker = 'unknown' WHERE status = 'running'")


def downgrade() -> None:
    for table in LEASED:
        with op.batch_alter_table(table, schema=None) as batch_op:
            for column in ("heartbeat_at", "attempt", "sent_at", "lease_worker", "attempt_base"):
                batch_op.drop_column(column)
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        for column in ("sent_at", "lease_worker", "attempt_base"):
            batch_op.drop_column(column)
        batch_op.alter_column("attempt", new_column_name="attempts")
