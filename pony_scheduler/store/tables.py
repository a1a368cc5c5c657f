"""Table definitions.  Changes to them need a migration in migrations/versions."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

metadata = MetaData()


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in and out.  SQLite keeps no zone: we store UTC and put it back."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store; pass an aware UTC datetime")
        return value.astimezone(UTC)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)

# One row per scheduler process that ever ran against this database: who it is, and the
# heartbeat that tells other schedulers (and `pb`) it is alive.
schedulers = Table(
    "schedulers",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("hostname", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("proc_start", BigInteger),  # with boot_id: is that scheduler process still alive?
    Column("boot_id", String(64)),
    Column("version", String(32), nullable=False),
    Column("started_at", UTCDateTime(), nullable=False),
    Column("heartbeat_at", UTCDateTime(), nullable=False),
    Column("stopped_at", UTCDateTime()),
)

# A counter bumped by every change to jobs, so that a running scheduler notices `pb job …`
# within a second with one tiny query instead of re-reading every job.
counters = Table(
    "counters",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Integer, nullable=False),
)

jobs = Table(
    "jobs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("command", Text, nullable=False),  # JSON list of argv
    Column("shell", Boolean, nullable=False, default=False),
    Column("schedule_kind", String(16), nullable=False),
    Column("schedule_expr", String(255), nullable=False, default=""),
    Column("schedule_tz", String(64), nullable=False, default="UTC"),
    Column("schedule_anchor", String(40), nullable=False, default=""),
    Column("timeout_s", Float),
    Column("retries", Integer, nullable=False, default=0),
    Column("retry_delay_s", Float, nullable=False, default=10.0),
    Column("overlap", String(8), nullable=False, default="skip"),
    Column("catch_up", String(8), nullable=False, default="once"),
    Column("cwd", Text),
    Column("env", Text, nullable=False, default="{}"),  # JSON object
    Column("enabled", Boolean, nullable=False, default=True),
    Column("next_due_at", UTCDateTime()),  # next occurrence not yet turned into a run
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    Index("ix_jobs_due", "enabled", "next_due_at"),
)

runs = Table(
    "runs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("job_id", Integer, ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
    Column("occurrence", UTCDateTime(), nullable=False),  # the due time it serves
    Column("attempt", Integer, nullable=False, default=1),
    Column("trigger", String(16), nullable=False),  # schedule|manual|retry|catch_up|resume
    Column("state", String(16), nullable=False),
    Column("due_at", UTCDateTime(), nullable=False),  # may not start before
    Column("claimed_by", String(36)),
    Column("lease_until", UTCDateTime()),
    Column("pid", Integer),
    Column("pid_start", BigInteger),  # /proc start time: lets a restart verify an orphan
    Column("hostname", String(255)),
    Column("started_at", UTCDateTime()),
    Column("finished_at", UTCDateTime()),
    Column("exit_code", Integer),
    Column("reason", Text),
    Column("output_path", Text),
    Column("output_tail", Text),
    Column("created_at", UTCDateTime(), nullable=False),
    UniqueConstraint("job_id", "occurrence", "attempt", name="uq_runs_job_occurrence_attempt"),
    Index("ix_runs_state_due", "state", "due_at"),
    Index("ix_runs_job_created", "job_id", "id"),
)
