"""training jobs: request, Airflow/MLflow ids, stage, progress, times, output, error, metrics, stop

Revision ID: 0002
Revises: 0001
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = (
    ("request", sa.JSON()),
    ("output_name", sa.String(length=64)),
    ("airflow_run_id", sa.String(length=250)),
    ("mlflow_run_id", sa.String(length=64)),
    ("mlflow_experiment_id", sa.String(length=64)),
    ("stage", sa.String(length=32)),
    ("started_at", sa.DateTime(timezone=True)),
    ("completed_at", sa.DateTime(timezone=True)),
    ("output_path", sa.String(length=512)),
    ("error", sa.Text()),
    ("metrics", sa.JSON()),
    ("stop_requested_at", sa.DateTime(timezone=True)),
    ("settled_at", sa.DateTime(timezone=True)),
)


def upgrade() -> None:
    with op.batch_alter_table("training_jobs", schema=None) as batch_op:
        for name, type_ in COLUMNS:
            batch_op.add_column(sa.Column(name, type_, nullable=True))
        batch_op.add_column(sa.Column("progress", sa.Float(), nullable=False, server_default="0"))
        batch_op.create_index("ix_training_jobs_status", ["status"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("training_jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_training_jobs_status")
        batch_op.drop_column("progress")
        for name, _ in reversed(COLUMNS):
            batch_op.drop_column(name)
