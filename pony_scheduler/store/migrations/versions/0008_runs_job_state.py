"""`pb runs JOB --state S -n N` (and the API's `?job=&state=`) read from an index:
ix_runs_job_state_id (job_id, state, id).  With only (job_id, id), a state the job
rarely reaches was looked for through every run of the job (1,000,000 runs: 0.5 s).

Revision ID: 0008
Revises: 0007
"""

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_runs_job_state_id", "runs", ["job_id", "state", "id"])


def downgrade() -> None:
    op.drop_index("ix_runs_job_state_id", "runs")
