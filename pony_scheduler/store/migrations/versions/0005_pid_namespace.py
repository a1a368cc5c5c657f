"""Host identity includes the pid namespace: containers on one kernel share its boot id
(and often a machine id), so whether a scheduler lives can be read from the process
table only by a scheduler in the same pid namespace.  runs.host grows to hold it.

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
    with op.batch_alter_table("schedulers") as batch:
        batch.add_column(sa.Column("pid_ns", sa.String(32)))
    # SQLite does not enforce a VARCHAR's length, and changing a type there rebuilds the
    # table (batch mode), which would lose the runs table's AUTOINCREMENT (0003): ids
    # must never be reused.  Only PostgreSQL needs the wider column.
    if op.get_bind().dialect.name == "postgresql":
        op.alter_column("runs", "host", type_=sa.String(128), existing_type=sa.String(80))


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.alter_column("runs", "host", type_=sa.String(80), existing_type=sa.String(128))
    with op.batch_alter_table("schedulers") as batch:
        batch.drop_column("pid_ns")
