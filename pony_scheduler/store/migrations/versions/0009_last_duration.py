"""A job's last result gets its duration where an older schema left none: 0003 filled
the last result from the run history without it, and 0006 cleared it where it moved the
last result to another run (review finding: "Last result: succeeded (run 1, ...)" with no
duration until the job ran again).  From the last run's own start and end, as `pb runs`
shows it (store: Settlement.duration_s), never negative.

Revision ID: 0009
Revises: 0008
"""

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        seconds = "(julianday(r.finished_at) - julianday(r.started_at)) * 86400.0"
        rounded = f"round(max(0.0, {seconds}), 3)"
    else:
        seconds = "EXTRACT(EPOCH FROM (r.finished_at - r.started_at))"
        rounded = f"round(greatest(0, {seconds})::numeric, 3)::double precision"
    op.execute(
        f"""
        UPDATE jobs SET last_duration_s = (
          SELECT {rounded} FROM runs r
          WHERE r.id = jobs.last_run_id
            AND r.started_at IS NOT NULL AND r.finished_at IS NOT NULL)
        WHERE last_duration_s IS NULL AND last_run_id IS NOT NULL
        """
    )


def downgrade() -> None:
    pass  # a duration more is no harm to an older schema
