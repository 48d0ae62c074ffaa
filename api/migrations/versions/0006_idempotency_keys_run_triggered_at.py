"""idempotency keys (the first answer to a request with an `Idempotency-Key`); training_jobs:
when the run's trigger was accepted (jobs are committed before their run is triggered)

Revision ID: 0006
Revises: 0005
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("training_jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("run_triggered_at", sa.DateTime(timezone=True), nullable=True))
    # every job before this revision had its run triggered in its creating request
    op.execute("UPDATE training_jobs SET run_triggered_at = created_at")
    op.create_table(
        "idempotency_keys",
        sa.Column("owner_id", sa.String(length=36), nullable=False),
        sa.Column("scope", sa.String(length=64), nullable=False),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("request_hash", sa.String(length=64), nullable=False),
        sa.Column("resource_id", sa.String(length=36), nullable=True),
        sa.Column("response_status", sa.Integer(), nullable=False),
        sa.Column("response_body", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["owner_id"], ["users.id"], name="fk_idempotency_keys_owner_id_users",
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("owner_id", "scope", "key", name="pk_idempotency_keys"),
    )
    op.create_index("ix_idempotency_keys_created_at", "idempotency_keys", ["created_at"], unique=False)
    op.create_index("ix_idempotency_keys_resource_id", "idempotency_keys", ["resource_id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_idempotency_keys_resource_id", table_name="idempotency_keys")
    op.drop_index("ix_idempotency_keys_created_at", table_name="idempotency_keys")
    op.drop_table("idempotency_keys")
    with op.batch_alter_table("training_jobs", schema=None) as batch_op:
        batch_op.drop_column("run_triggered_at")
