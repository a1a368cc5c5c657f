"""Table definitions.  Changes to them need a migration in migrations/versions."""

from __future__ import annotations

from sqlalchemy import Column, DateTime, Integer, MetaData, String, Table

metadata = MetaData()

# One row per scheduler process that ever ran against this database: who it is, and the
# heartbeat that tells other schedulers (and `pb`) it is alive.
schedulers = Table(
    "schedulers",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("hostname", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("version", String(32), nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("heartbeat_at", DateTime(timezone=True), nullable=False),
    Column("stopped_at", DateTime(timezone=True)),
)
