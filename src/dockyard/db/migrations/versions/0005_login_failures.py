"""Failed logins, so that the brake on guessing holds across server processes.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "login_failures",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("key", sa.String(300), nullable=False),
        sa.Column("ts", sa.Float, nullable=False),
    )
    op.create_index("ix_login_failures_key", "login_failures", ["key", "ts"])


def downgrade() -> None:
    op.drop_table("login_failures")
