"""Retention: when each tag was last pulled, and retention policies.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tags") as batch:
        batch.add_column(sa.Column("pulled_at", sa.Float, nullable=True))
    op.create_table(
        "retention_policies",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("repository_pattern", sa.String(255), nullable=False),
        sa.Column("rules", sa.Text, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("retention_policies")
    with op.batch_alter_table("tags") as batch:
        batch.drop_column("pulled_at")
