"""Several hosts and the run keeper: lease epochs (fencing tokens), host identity by
machine id and boot id, the database clock's offset, containment and resource use.

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
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("epoch", sa.Integer, nullable=False, server_default="0"))
        batch.add_column(sa.Column("host", sa.String(80)))
        batch.add_column(sa.Column("leftovers", sa.Integer))
        batch.add_column(sa.Column("peak_memory", sa.BigInteger))
        batch.add_column(sa.Column("cpu_s", sa.Float))
        batch.add_column(sa.Column("containment", sa.String(16)))
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(
            sa.Column("leftovers", sa.String(8), nullable=False, server_default="kill")
        )
        batch.add_column(sa.Column("memory_max", sa.BigInteger))
        batch.add_column(sa.Column("cpu_max", sa.Float))
        batch.add_column(sa.Column("tasks_max", sa.Integer))
    # The scheduler's upkeep asks for removed jobs at every heartbeat: an index keeps that
    # one look-up whatever the number of jobs.
    op.create_index("ix_jobs_removed", "jobs", ["removed_at"])
    with op.batch_alter_table("schedulers") as batch:
        batch.add_column(sa.Column("machine_id", sa.String(64)))
        batch.add_column(sa.Column("clock_offset_s", sa.Float))
        batch.add_column(sa.Column("home", sa.Text))


def downgrade() -> None:
    op.drop_index("ix_jobs_removed", "jobs")
    with op.batch_alter_table("schedulers") as batch:
        batch.drop_column("home")
        batch.drop_column("clock_offset_s")
        batch.drop_column("machine_id")
    with op.batch_alter_table("jobs") as batch:
        for name in ("tasks_max", "cpu_max", "memory_max", "leftovers"):
            batch.drop_column(name)
    with op.batch_alter_table("runs") as batch:
        for name in ("containment", "cpu_s", "peak_memory", "leftovers", "host", "epoch"):
            batch.drop_column(name)
