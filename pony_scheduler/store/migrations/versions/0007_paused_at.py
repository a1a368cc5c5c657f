"""When a job was paused: `pb job resume` skips only the queued runs that came due
while it was paused (pb-job(1)); runs queued and due before the pause - a run waiting
behind its job's running one, a run queued to resume after a stop - run after it.
Jobs paused before this revision get their last change's time, the pause itself unless
they were edited since (then a few more runs are kept, none dropped wrongly).

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("paused_at", sa.DateTime(timezone=True)))
    op.execute(
        sa.text(
            "UPDATE jobs SET paused_at = updated_at WHERE enabled = :no AND removed_at IS NULL"
        ).bindparams(no=False)
    )


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("paused_at")
