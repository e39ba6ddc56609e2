"""PostgreSQL: repository and tag names compare bytewise (COLLATE "C"), as on SQLite.

The catalog and tag lists are in lexical (byte) order, as Distribution returns them; a
database created with a language locale would otherwise sort ``B`` after ``a`` and ``a_b``
before ``a0``, and could not use the name index for namespace prefixes
(``name LIKE 'team/%'``, checked on each push into a namespace with a quota). SQLite
already compares bytewise: nothing to do there.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_COLUMNS = (("repositories", "name", 255), ("tags", "name", 128))


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table, column, length in _COLUMNS:
        op.alter_column(
            table,
            column,
            type_=sa.String(length, collation="C"),
            existing_type=sa.String(length),
            existing_nullable=False,
        )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table, column, length in _COLUMNS:
        op.alter_column(
            table,
            column,
            type_=sa.String(length),
            existing_type=sa.String(length, collation="C"),
            existing_nullable=False,
        )
