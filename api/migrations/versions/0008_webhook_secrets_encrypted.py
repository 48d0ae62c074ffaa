"""webhooks: signing secrets encrypted at rest (Fernet, key from QLORA_WEBHOOK_SECRET_KEY; see
api.services.webhooks.sealing); the column widens to hold the tokens

Revision ID: 0008
Revises: 0007
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import context, op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

webhooks = sa.table("webhooks", sa.column("id", sa.String), sa.column("secret", sa.String))


def _settings():  # the API's own when it migrates at start-up, else the environment's
    from api.core.config import Settings

    return context.config.attributes.get("settings") or Settings()


def upgrade() -> None:
    with op.batch_alter_table("webhooks", schema=None) as batch_op:
        batch_op.alter_column("secret", existing_type=sa.String(128), type_=sa.String(512),
                              existing_nullable=False)
    bind = op.get_bind()
    rows = bind.execute(sa.select(webhooks.c.id, webhooks.c.secret)).all()
    clear = [(i, s) for i, s in rows if s.startswith("whsec_")]
    if not clear:
        return
    from api.services.webhooks.sealing import seal

    settings = _settings()
    for webhook_id, secret in clear:
        bind.execute(webhooks.update().where(webhooks.c.id == webhook_id).values(secret=seal(secret, settings)))


def downgrade() -> None:
    from api.services.webhooks.sealing import CLEAR_PREFIX, unseal

    bind = op.get_bind()
    settings = _settings()
    for webhook_id, stored in bind.execute(sa.select(webhooks.c.id, webhooks.c.secret)).all():
        if not stored.startswith(CLEAR_PREFIX):
            bind.execute(webhooks.update().where(webhooks.c.id == webhook_id).values(secret=unseal(stored, settings)))
    with op.batch_alter_table("webhooks", schema=None) as batch_op:
        batch_op.alter_column("secret", existing_type=sa.String(512), type_=sa.String(128),
                              existing_nullable=False)
