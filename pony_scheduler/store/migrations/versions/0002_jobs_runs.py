"""Jobs, their runs, and the change counter.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "counters",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.Integer, nullable=False),
    )
    op.create_table(
        "jobs",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("command", sa.Text, nullable=False),
        sa.Column("shell", sa.Boolean, nullable=False),
        sa.Column("schedule_kind", sa.String(16), nullable=False),
        sa.Column("schedule_expr", sa.String(255), nullable=False),
        sa.Column("schedule_tz", sa.String(64), nullable=False),
        sa.Column("schedule_anchor", sa.String(40), nullable=False),
        sa.Column("timeout_s", sa.Float),
        sa.Column("retries", sa.Integer, nullable=False),
        sa.Column("retry_delay_s", sa.Float, nullable=False),
        sa.Column("overlap", sa.String(8), nullable=False),
        sa.Column("catch_up", sa.String(8), nullable=False),
        sa.Column("cwd", sa.Text),
        sa.Column("env", sa.Text, nullable=False),
        sa.Column("enabled", sa.Boolean, nullable=False),
        sa.Column("next_due_at", TZ),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("updated_at", TZ, nullable=False),
    )
    op.create_index("ix_jobs_due", "jobs", ["enabled", "next_due_at"])
    op.create_table(
        "runs",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column(
            "job_id", sa.Integer, sa.ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("occurrence", TZ, nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("trigger", sa.String(16), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("due_at", TZ, nullable=False),
        sa.Column("claimed_by", sa.String(36)),
        sa.Column("lease_until", TZ),
        sa.Column("pid", sa.Integer),
        sa.Column("pid_start", sa.BigInteger),
        sa.Column("hostname", sa.String(255)),
        sa.Column("started_at", TZ),
        sa.Column("finished_at", TZ),
        sa.Column("exit_code", sa.Integer),
        sa.Column("reason", sa.Text),
        sa.Column("output_path", sa.Text),
        sa.Column("output_tail", sa.Text),
        sa.Column("created_at", TZ, nullable=False),
        sa.UniqueConstraint(
            "job_id", "occurrence", "attempt", name="uq_runs_job_occurrence_attempt"
        ),
    )
    op.create_index("ix_runs_state_due", "runs", ["state", "due_at"])
    op.create_index("ix_runs_job_created", "runs", ["job_id", "id"])


def downgrade() -> None:
    op.drop_table("runs")
    op.drop_table("jobs")
    op.drop_table("counters")
