"""method and objective settings: their own JSON columns, out of the flat hyperparameters

Revision ID: 8d2e3f4a5b6c
Revises: 7c1d2e3f4a5b
Create Date: 2026-12-03 21:00:00

"""

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "8d2e3f4a5b6c"
down_revision: str | Sequence[str] | None = "7c1d2e3f4a5b"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The flat keys of the old Hyperparameters model -> (the methods or objectives that read them, their new name).
# A frozen copy of backend.method.registry's legacy map: a migration describes the data of its day.
METHOD_KEYS = {
    "lora_r": (("lora", "qlora"), "r"),
    "lora_alpha": (("lora", "qlora"), "lora_alpha"),
    "lora_dropout": (("lora", "qlora"), "lora_dropout"),
    "lora_target_modules": (("lora", "qlora"), "target_modules"),
    "lora_use_rslora": (("lora", "qlora"), "use_rslora"),
    "lora_use_dora": (("lora", "qlora"), "use_dora"),
    "freeze_trainable_layers": (("freeze",), "trainable_layers"),
}
OBJECTIVE_KEYS = {
    "dpo_beta": (("dpo",), "beta"),
    "kto_beta": (("kto",), "beta"),
    "kto_desirable_weight": (("kto",), "desirable_weight"),
    "kto_undesirable_weight": (("kto",), "undesirable_weight"),
}

jobs = sa.table(
    "jobs",
    sa.column("id", sa.Integer),
    sa.column("method", sa.String),
    sa.column("objective", sa.String),
    sa.column("hyperparameters", sa.JSON),
    sa.column("method_config", sa.JSON),
    sa.column("objective_config", sa.JSON),
)


def _split(hp: dict[str, Any], method: str, objective: str) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    rest, method_config, objective_config = {}, {}, {}
    for key, value in hp.items():
        if key in METHOD_KEYS:
            owners, new = METHOD_KEYS[key]
            if method in owners:
                method_config[new] = value
        elif key in OBJECTIVE_KEYS:
            owners, new = OBJECTIVE_KEYS[key]
            if objective in owners:
                objective_config[new] = value
        else:
            rest[key] = value  # the defaults every old job stored for other methods are dropped with the rest
    return rest, method_config, objective_config


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("method_config", sa.JSON(), server_default="{}", nullable=False))
        batch_op.add_column(sa.Column("objective_config", sa.JSON(), server_default="{}", nullable=False))
    conn = op.get_bind()
    for row in conn.execute(sa.select(jobs.c.id, jobs.c.method, jobs.c.objective, jobs.c.hyperparameters)).all():
        hp, method_config, objective_config = _split(row.hyperparameters or {}, row.method or "full", row.objective)
        conn.execute(
            jobs.update()
            .where(jobs.c.id == row.id)
            .values(hyperparameters=hp, method_config=method_config, objective_config=objective_config)
        )


def downgrade() -> None:
    conn = op.get_bind()
    columns = (jobs.c.id, jobs.c.method, jobs.c.objective, jobs.c.hyperparameters)
    rows = conn.execute(sa.select(*columns, jobs.c.method_config, jobs.c.objective_config))
    for row in rows.all():
        hp = dict(row.hyperparameters or {})
        for old, (owners, new) in METHOD_KEYS.items():
            if (row.method or "full") in owners and new in (row.method_config or {}):
                hp[old] = row.method_config[new]
        for old, (owners, new) in OBJECTIVE_KEYS.items():
            if row.objective in owners and new in (row.objective_config or {}):
                hp[old] = row.objective_config[new]
        conn.execute(jobs.update().where(jobs.c.id == row.id).values(hyperparameters=hp))
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("objective_config")
        batch_op.drop_column("method_config")
