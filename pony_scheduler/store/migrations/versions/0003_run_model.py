"""The run model: start deadlines, set-aside jobs, last results, bytes of output, ids never
reused, missed-occurrence summaries and the audit trail.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("umask", sa.Integer, nullable=False, server_default="18"))
        batch.add_column(sa.Column("start_deadline_s", sa.Float))
        batch.add_column(
            sa.Column("start_deadline_auto", sa.Boolean, nullable=False, server_default=sa.true())
        )
        batch.add_column(sa.Column("max_queued", sa.Integer, nullable=False, server_default="10"))
        batch.add_column(sa.Column("jitter_s", sa.Float))
        batch.add_column(sa.Column("env_file", sa.Text))
        batch.add_column(sa.Column("secret_env", sa.Text, nullable=False, server_default="[]"))
        batch.add_column(sa.Column("error", sa.Text))
        batch.add_column(sa.Column("last_run_id", sa.Integer))
        batch.add_column(sa.Column("last_state", sa.String(16)))
        batch.add_column(sa.Column("last_finished_at", TZ))
        batch.add_column(sa.Column("last_duration_s", sa.Float))
        batch.add_column(sa.Column("last_success_at", TZ))
        batch.add_column(sa.Column("removed_at", TZ))
    # Jobs made before start deadlines keep the old fixed misfire grace of 60 s until
    # their schedule is next edited (then the schedule's default applies).
    op.execute("UPDATE jobs SET start_deadline_s = 60")

    sqlite = op.get_bind().dialect.name == "sqlite"
    if sqlite:
        op.execute(
            "UPDATE runs SET output_tail = CAST(output_tail AS BLOB) "
            "WHERE typeof(output_tail) = 'text'"
        )
    # SQLite: rebuilt with AUTOINCREMENT, so that ids are never reused.
    with op.batch_alter_table(
        "runs", recreate="always" if sqlite else "auto", table_kwargs={"sqlite_autoincrement": True}
    ) as batch:
        if not sqlite:
            batch.alter_column(
                "output_tail",
                type_=sa.LargeBinary,
                postgresql_using="convert_to(output_tail, 'UTF8')",
            )
        else:
            batch.alter_column("output_tail", type_=sa.LargeBinary)
        batch.add_column(sa.Column("signal", sa.Integer))
        batch.add_column(sa.Column("batch", sa.BigInteger))
        batch.create_index("ix_runs_state_id", ["state", "id"])
    # The last settled run of each job, once, from the history.
    op.execute("""
        UPDATE jobs SET
          last_run_id = (SELECT max(id) FROM runs
                         WHERE runs.job_id = jobs.id AND state NOT IN ('queued', 'running'))
    """)
    op.execute("""
        UPDATE jobs SET
          last_state = (SELECT state FROM runs WHERE runs.id = jobs.last_run_id),
          last_finished_at = (SELECT finished_at FROM runs WHERE runs.id = jobs.last_run_id),
          last_success_at = (SELECT max(finished_at) FROM runs
                             WHERE runs.job_id = jobs.id AND state = 'succeeded')
        WHERE last_run_id IS NOT NULL
    """)

    op.create_table(
        "missed",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column(
            "job_id", sa.Integer, sa.ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("first_occurrence", TZ, nullable=False),
        sa.Column("last_occurrence", TZ, nullable=False),
        sa.Column("count", sa.BigInteger, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("recorded_at", TZ, nullable=False),
    )
    op.create_index("ix_missed_job", "missed", ["job_id", "id"])
    op.create_table(
        "audit",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("at", TZ, nullable=False),
        sa.Column("uid", sa.Integer),
        sa.Column("user", sa.String(64)),
        sa.Column("via", sa.String(16), nullable=False),
        sa.Column("scope", sa.String(16)),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("job", sa.String(64)),
        sa.Column("detail", sa.Text),
        sqlite_autoincrement=True,
    )


def downgrade() -> None:
    op.drop_table("audit")
    op.drop_table("missed")
    with op.batch_alter_table("runs") as batch:
        batch.drop_index("ix_runs_state_id")
        batch.drop_column("batch")
        batch.drop_column("signal")
    with op.batch_alter_table("jobs") as batch:
        for name in (
            "removed_at",
            "last_success_at",
            "last_duration_s",
            "last_finished_at",
            "last_state",
            "last_run_id",
            "error",
            "secret_env",
            "env_file",
            "jitter_s",
            "max_queued",
            "start_deadline_auto",
            "start_deadline_s",
            "umask",
        ):
            batch.drop_column(name)
