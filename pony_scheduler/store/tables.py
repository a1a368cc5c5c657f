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
    LargeBinary,
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
    Column("machine_id", String(64)),  # with boot_id: the host (never its hostname)
    Column("clock_offset_s", Float),  # the database's clock minus this host's, seconds
    # Its home: the schedulers of one home follow each other, and its run keeper holds
    # their runs, so only they may say that a predecessor's runs are gone.
    Column("home", Text),
    Column("pid_ns", String(32)),  # with machine_id and boot_id: can we see its pid?
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
    Column("paused_at", UTCDateTime()),  # while paused: since when (pb job resume)
    Column("next_due_at", UTCDateTime()),  # next occurrence not yet turned into a run
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    Column("umask", Integer, nullable=False, default=0o022),
    # Seconds a due run may wait to start before it expires; NULL: never.  `auto`: derived
    # from the schedule (occurrences.default_start_deadline), recomputed when it changes.
    Column("start_deadline_s", Float),
    Column("start_deadline_auto", Boolean, nullable=False, default=True),
    Column("max_queued", Integer, nullable=False, default=10),
    Column("jitter_s", Float),
    Column("env_file", Text),
    Column("secret_env", Text, nullable=False, default="[]"),  # JSON list of env names
    # Why the daemon set this job aside (its schedule or definition cannot be evaluated);
    # NULL when it is scheduled normally.  Cleared by `pb job edit`.
    Column("error", Text),
    # The latest settled run, written with that run's final state: `pb job list` and
    # `show` read it here instead of scanning the runs table.
    Column("last_run_id", Integer),
    Column("last_state", String(16)),
    Column("last_finished_at", UTCDateTime()),
    Column("last_duration_s", Float),
    Column("last_success_at", UTCDateTime()),
    # Set while `pb job remove` deletes the job's runs in batches; the row is renamed so
    # that the name is free at once, and it is deleted last.
    Column("removed_at", UTCDateTime()),
    # Containment (the run keeper): what a run leaves behind when its main process exits
    # (kill|keep), and resource limits where the cgroup controllers exist.
    Column("leftovers", String(8), nullable=False, default="kill"),
    Column("memory_max", BigInteger),  # bytes
    Column("cpu_max", Float),  # CPUs, e.g. 0.5
    Column("tasks_max", Integer),
    Index("ix_jobs_due", "enabled", "next_due_at"),
    Index("ix_jobs_removed_name", "removed_at", "name"),  # pages by name; removed jobs
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
    Column("output_tail", LargeBinary),  # the last bytes of output, exactly as written
    Column("created_at", UTCDateTime(), nullable=False),
    Column("signal", Integer),  # the signal that ended it; exit_code is then 128+signal
    Column("batch", BigInteger),  # runs of one catch-up decision share it (occurrences.Plan)
    # The fencing token: raised by every claim, hand-over and rescue; a write carrying an
    # older epoch is refused (a scheduler paused past its lease records nothing).
    Column("epoch", Integer, nullable=False, default=0),
    Column("host", String(128)),  # machine id:boot id:pid namespace where it runs
    Column("leftovers", Integer),  # processes left behind when its main process exited
    Column("peak_memory", BigInteger),  # bytes
    Column("cpu_s", Float),
    Column("containment", String(16)),  # cgroup2, cgroup1, pgroup
    UniqueConstraint("job_id", "occurrence", "attempt", name="uq_runs_job_occurrence_attempt"),
    Index("ix_runs_state_due", "state", "due_at"),
    Index("ix_runs_job_created", "job_id", "id"),
    Index("ix_runs_state_id", "state", "id"),
    Index("ix_runs_job_state_id", "job_id", "state", "id"),  # pb runs JOB --state S
    # Ids are never reused (SQLite would reuse the highest after a delete): a removed
    # job's run ids and output files are never shown for a new job.
    sqlite_autoincrement=True,
)

# Missed occurrences beyond what is recorded one by one (occurrences.RECORD_CAP): one row per
# outage and job, so that every missed occurrence is accounted for.
missed = Table(
    "missed",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("job_id", Integer, ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
    Column("first_occurrence", UTCDateTime(), nullable=False),
    Column("last_occurrence", UTCDateTime(), nullable=False),
    Column("count", BigInteger, nullable=False),
    Column("reason", Text, nullable=False),
    Column("recorded_at", UTCDateTime(), nullable=False),
    Index("ix_missed_job", "job_id", "id"),
)

# Every change and trigger of a job, by whom (pb audit).
audit = Table(
    "audit",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", UTCDateTime(), nullable=False),
    Column("uid", Integer),
    Column("user", String(64)),
    Column("via", String(16), nullable=False),  # cli, api, dashboard
    Column("scope", String(16)),  # the token scope for API calls
    Column("action", String(16), nullable=False),  # add, edit, remove, run, pause, resume, kill
    Column("job", String(64)),
    Column("detail", Text),
    sqlite_autoincrement=True,
)
