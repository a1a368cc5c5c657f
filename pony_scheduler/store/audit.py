"""The audit trail: every change and trigger of a job, by whom (`pb audit`).

Each entry is written in the same transaction as the change it records, so one is never
without the other.  Who: the Actor (pony_scheduler/actor.py) - the CLI's user, or the
gateway's caller by its token scope or Unix-socket peer, or a dashboard session (via
"dashboard", the dashboard's uid, and in `scope` how the session was opened).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Engine, select

from pony_scheduler.actor import Actor, audit_scope, cli_actor
from pony_scheduler.store.common import iso, row_dict, utcnow
from pony_scheduler.store.tables import audit

ACTIONS = ("add", "edit", "remove", "run", "pause", "resume", "kill")


def record(
    connection: Connection,
    actor: Actor | None,
    action: str,
    job: str | None,
    detail: str | None = None,
) -> None:
    """Add one entry inside the caller's transaction; no actor: the local user (the CLI,
    or a program using the store directly)."""
    who = actor or cli_actor()
    connection.execute(
        audit.insert().values(
            at=utcnow(),
            uid=who.uid,
            user=who.user,
            via=who.via,
            scope=audit_scope(who),
            action=action,
            job=job,
            detail=_text(detail or "")[:2000] or None,
        )
    )


def _text(detail: str) -> str:
    """Text the database can store: a command's bytes that are not UTF-8 (carried as
    surrogates by os.fsdecode) written as \\xNN escapes, as `pb job show` shows them."""
    try:
        raw = detail.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate no byte stands for
        return detail.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")


class AuditQueries:
    engine: Engine

    def audit_entries(self, job: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        """The latest `limit` entries, newest first, of every job or of `job`; times as
        ISO 8601 UTC."""
        query = select(audit).order_by(audit.c.id.desc()).limit(limit)
        if job is not None:
            query = query.where(audit.c.job == job)
        with self.engine.connect() as connection:
            rows = [row_dict(row) for row in connection.execute(query)]
        for row in rows:
            row["at"] = iso(row["at"])
        return rows

    def record_audit(
        self, actor: Actor | None, action: str, job: str | None, detail: str | None = None
    ) -> None:
        """An entry for something done outside the database (a kill sent to the keeper)."""
        with self.engine.begin() as connection:
            record(connection, actor, action, job, detail)
