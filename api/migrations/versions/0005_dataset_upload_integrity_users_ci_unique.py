"""datasets: the declared upload size, the part size of a multipart upload and the ETag recorded
at upload-complete (the validation run processes exactly that object); users: usernames and
emails unique without regard to case (unique indexes on lower())

Revision ID: 0005
Revises: 0004
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _refuse_case_duplicates(column: str) -> None:
    duplicates = op.get_bind().execute(sa.text(
        f"SELECT lower({column}) FROM users GROUP BY lower({column}) HAVING count(*) > 1 LIMIT 5")).scalars().all()
    if duplicates:
        raise RuntimeError(
            f"users.{column} holds values that differ only in case ({', '.join(map(str, duplicates))}); rename "
            "or merge those accounts, then migrate again")


def upgrade() -> None:
    with op.batch_alter_table("datasets", schema=None) as batch_op:
        batch_op.add_column(sa.Column("declared_size_bytes", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("part_size_bytes", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("upload_etag", sa.String(length=128), nullable=True))
    _refuse_case_duplicates("username")
    _refuse_case_duplicates("email")
    op.create_index("uq_users_username_lower", "users", [sa.text("lower(username)")], unique=True)
    op.create_index("uq_users_email_lower", "users", [sa.text("lower(email)")], unique=True)


def downgrade() -> None:
    op.drop_index("uq_users_email_lower", table_name="users")
    op.drop_index("uq_users_username_lower", table_name="users")
    with op.batch_alter_table("datasets", schema=None) as batch_op:
        batch_op.drop_column("upload_etag")
        batch_op.drop_column("part_size_bytes")
        batch_op.drop_column("declared_size_bytes")
