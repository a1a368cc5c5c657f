"""The database's clock: on several hosts, leases and due times are judged by it.

A host's clock may be minutes off; the database server's is the one all schedulers share.
Rather than a query per decision, a scheduler measures the offset between the two at each
heartbeat and adds it to its own clock (scheduler/clock.py).
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta

from sqlalchemy import Engine, text

from pony_scheduler.store.common import utcnow


class ClockQueries:
    engine: Engine

    @property
    def has_clock(self) -> bool:
        """Whether the database has a clock of its own (PostgreSQL), which due times and
        leases follow; SQLite's is this host's."""
        return self.engine.dialect.name == "postgresql"

    def clock_offset(self) -> float:
        """The database's clock minus this host's, in seconds, measured now (to within
        half a round trip).  Zero for SQLite, which has no clock of its own."""
        if not self.has_clock:
            return 0.0
        with self.engine.connect() as connection:
            before = time.time()
            server = connection.execute(
                text("SELECT extract(epoch FROM clock_timestamp())")
            ).scalar()
            after = time.time()
        return float(server or 0) - (before + after) / 2

    def db_now(self) -> datetime:
        """The database's time now (this host's for SQLite), aware UTC; one query on
        PostgreSQL."""
        if not self.has_clock:
            return utcnow()
        return utcnow() + timedelta(seconds=self.clock_offset())
