"""Storage lifecycle: quotas per namespace, tag immutability rules.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "quotas",
        sa.Column("namespace", sa.String(64), primary_key=True),
        sa.Column("max_bytes", sa.BigInteger, nullable=True),
        sa.Column("max_repositories", sa.Integer, nullable=True),
    )
    op.create_table(
        "immutability_rules",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("repository_pattern", sa.String(255), nullable=False),
        sa.Column("tag_pattern", sa.String(128), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.UniqueConstraint("repository_pattern", "tag_pattern", name="uq_immutability_rule"),
    )


def downgrade() -> None:
    op.drop_table("immutability_rules")
    op.drop_table("quotas")
