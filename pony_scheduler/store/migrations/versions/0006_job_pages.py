"""Pages of `pb job list` read in name order from an index, and the job's last result
counts only runs that ran.

- ix_jobs_removed (removed_at) becomes ix_jobs_removed_name (removed_at, name): a page,
  `WHERE removed_at IS NULL ORDER BY name LIMIT n` (after a name or not), is then read
  from the index in order instead of sorting every job first; the upkeep's look-up of
  removed jobs uses the same index.  DROP ... IF EXISTS: 0004 gained ix_jobs_removed
  after some databases had passed it.
- 0003 filled the last result from the latest settled run of each job, `skipped` and
  `expired` included; the scheduler writes it only for runs that started (store/runs.py
  LAST_RESULT, from settle()).  Jobs whose filled-in last result is such a run get the
  latest run that did start, or none.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_STARTED = "state NOT IN ('queued', 'running', 'skipped', 'expired')"


def upgrade() -> None:
    op.execute("DROP INDEX IF EXISTS ix_jobs_removed")
    op.create_index("ix_jobs_removed_name", "jobs", ["removed_at", "name"])
    op.execute(
        sa.text(f"""
        UPDATE jobs SET
          last_run_id = (SELECT max(id) FROM runs
                         WHERE runs.job_id = jobs.id AND {_STARTED})
        WHERE last_state IN ('skipped', 'expired')
    """)
    )
    op.execute(
        sa.text("""
        UPDATE jobs SET
          last_state = (SELECT state FROM runs WHERE runs.id = jobs.last_run_id),
          last_finished_at = (SELECT finished_at FROM runs WHERE runs.id = jobs.last_run_id),
          last_duration_s = NULL
        WHERE last_state IN ('skipped', 'expired')
    """)
    )


def downgrade() -> None:
    op.drop_index("ix_jobs_removed_name", "jobs")
    op.create_index("ix_jobs_removed", "jobs", ["removed_at"])
