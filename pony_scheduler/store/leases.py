"""Renewing the leases of runs a host's run keeper holds while no scheduler runs there.

A scheduler renews the leases of its runs at each heartbeat (runs.renew_leases).  When it
dies or restarts, its runs go on under the run keeper, and the keeper renews their leases
through a short-lived process (scheduler/renew.py) until the host's next scheduler adopts
them; so another host never rescues a run that is alive (docs/KEEPER.md, "Leases while
no scheduler is connected").  A run is named by (run id, epoch): the epoch is the fencing
token raised by every claim, so a run that another host took over, or declared lost, is
never renewed, and the answer says so: the keeper then stops its copy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Connection, Engine, func, select, text, tuple_, update

from pony_scheduler.runstate import RunState
from pony_scheduler.store.common import utcnow
from pony_scheduler.store.tables import runs

BATCH = 500  # (run id, epoch) pairs per statement
# A renewal must never wait long for a row another transaction holds (a frozen host's):
# it fails, and the keeper tries again sooner.
LOCK_TIMEOUT = "5s"


@dataclass(frozen=True, slots=True)
class Renewed:
    """What one renewal did: the runs whose lease now ends at `until` (the database's
    clock, aware UTC), and for the others what the database has instead, in words
    ("lost at epoch 3", "running at epoch 4", "no such run")."""

    renewed: tuple[int, ...]
    gone: dict[int, str]
    until: datetime


class Leases:
    """The one query a renewer needs, on an engine of its own (store/engine.py)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def renew_held(self, held: Sequence[tuple[int, int]], lease: float) -> Renewed:
        """Extend to the database's now + `lease` seconds the lease of each run in
        `held`, as (run id, epoch), that is still running under that epoch; one short
        transaction.  The database's clock decides (PostgreSQL's clock_timestamp(); this
        host's for SQLite, which has none).  Raises DBAPIError when the database cannot
        be reached or a row stays locked past LOCK_TIMEOUT."""
        with self.engine.begin() as connection:
            now = self._database_now(connection)
            until = now + timedelta(seconds=lease)
            renewed: set[int] = set()
            for start in range(0, len(held), BATCH):
                chunk = list(held[start : start + BATCH])
                statement = (
                    update(runs)
                    .where(
                        runs.c.state == RunState.RUNNING.value,
                        tuple_(runs.c.id, runs.c.epoch).in_(chunk),
                    )
                    .values(lease_until=until)
                    .returning(runs.c.id)
                )
                renewed.update(connection.execute(statement).scalars())
            missing = [run_id for run_id, _ in held if run_id not in renewed]
            gone = {run_id: "no such run" for run_id in missing}
            for start in range(0, len(missing), BATCH):
                query = select(runs.c.id, runs.c.state, runs.c.epoch).where(
                    runs.c.id.in_(missing[start : start + BATCH])
                )
                for row in connection.execute(query):
                    gone[row.id] = f"{row.state} at epoch {row.epoch}"
        return Renewed(tuple(sorted(renewed)), gone, until)

    def _database_now(self, connection: Connection) -> datetime:
        if self.engine.dialect.name != "postgresql":
            return utcnow()
        connection.execute(text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
        moment = connection.execute(select(func.clock_timestamp())).scalar_one()
        return moment
