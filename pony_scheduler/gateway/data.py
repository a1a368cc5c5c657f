"""The gateway's access to jobs and runs: the same Store the CLI uses, off the event loop.

The gateway starts before the scheduler (`pb service start all`), so the database may not
exist yet: it is opened on first use and again after a failure, never migrated here (only
the scheduler migrates, so two versions never fight over the schema), and an SQLite file
that does not exist is not created by a mere read.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from pony_scheduler.actor import Actor
from pony_scheduler.errors import PonyError
from pony_scheduler.runstate import RunState

log = logging.getLogger("pony_scheduler.gateway")

T = TypeVar("T")

RUN_STATES = tuple(state.value for state in RunState)


class Unavailable(PonyError):
    """The database cannot answer now (not created yet, server down): HTTP 503."""


class NotFound(PonyError):
    """No such job or run: HTTP 404."""


def job_json(job: dict[str, Any]) -> dict[str, Any]:
    from pony_scheduler.jobs import job_json as view

    return view(job, with_env=False)


class Data:
    def __init__(self, url: str, home: Path) -> None:
        self.url = url
        self.home = home
        self._store: Any = None
        self._lock = asyncio.Lock()
        self._trust_checked = False

    async def _call(self, function: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, functools.partial(function, *args))

    async def store(self) -> Any:
        async with self._lock:
            if self._store is None:
                self._store = await self._call(self._open)
            return self._store

    def _open(self) -> Any:
        from pony_scheduler.store import Store
        from pony_scheduler.store.engine import parse_url, safe_url

        url = parse_url(self.url)
        on_disk = url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:")
        if on_disk and not Path(str(url.database)).exists():
            raise Unavailable(
                f"the scheduler has not initialised the database yet "
                f"({safe_url(url)} does not exist); start it with "
                "'pb scheduler start'"
            )
        try:
            store = Store.open(self.url, upgrade=False)
        except PonyError as exc:
            raise Unavailable(str(exc)) from None
        if not self._trust_checked:
            self._warn_if_trusted(store.engine)
        return store

    def check_trust(self) -> None:
        """At start (README, SECURITY): warn when a PostgreSQL server let us in without a
        password.  A server that cannot be reached now is checked at the first open."""
        from pony_scheduler.store.engine import make_engine, parse_url

        if parse_url(self.url).get_backend_name() != "postgresql":
            self._trust_checked = True
            return
        try:
            engine = make_engine(self.url)
        except PonyError:
            return
        try:
            self._warn_if_trusted(engine)
        finally:
            engine.dispose()

    def _warn_if_trusted(self, engine: Any) -> None:
        from pony_scheduler.store.engine import trust_warning

        with contextlib.suppress(Exception):  # a warning must not cost the answer (or start)
            warning = trust_warning(engine)
            self._trust_checked = True
            if warning:
                log.warning("%s", warning)

    async def query(self, method: str, *args: Any) -> Any:
        """Call Store.`method` in a worker thread."""
        return await self.within(lambda store: getattr(store, method)(*args))

    async def within(self, function: Callable[[Any], T]) -> T:
        """Run `function(store)` in a worker thread; database trouble becomes Unavailable."""
        from sqlalchemy.exc import SQLAlchemyError

        store = await self.store()
        try:
            return await self._call(function, store)
        except SQLAlchemyError as exc:
            log.warning("Database error: %s", exc)
            text = str(getattr(exc, "orig", None) or exc).strip().splitlines()
            raise Unavailable(
                f"database error: {text[0] if text else type(exc).__name__}"
            ) from None

    # -- what the API serves -----------------------------------------------------------------
    async def jobs(
        self, after: str | None = None, limit: int | None = None
    ) -> list[dict[str, Any]]:
        """Jobs by name, those after `after`, at most `limit` (None: all)."""
        found = await self.within(lambda store: list(store.iter_jobs(after, limit)))
        return [job_json(job) for job in found]

    async def job(self, name: str) -> dict[str, Any]:
        job = await self.query("get_job", name)
        if job is None:
            raise NotFound(f"no job named {name!r}")
        return job_json(job)

    async def runs(self, job: str | None, limit: int, state: str | None) -> list[dict[str, Any]]:
        return list(await self.query("list_runs", job, limit, state))

    async def run(self, run_id: int) -> dict[str, Any]:
        run = await self.query("get_run", run_id)
        if run is None:
            raise NotFound(f"no run with id {run_id}")
        from pony_scheduler.files import output_file_may_be_the_runs

        tail = run.get("output_tail")
        its = output_file_may_be_the_runs(run["state"], tail, run.get("reason"))
        path = run.get("output_path") if its else None
        run["output"] = await self._call(_read_output, self.home, path, tail)
        return dict(run)

    # The actor (who asked, pony_scheduler.actor) goes to the audit trail with the change.
    async def request_run(self, name: str, actor: Actor | None = None) -> int:
        await self.job(name)  # 404 for an unknown job, before anything is written
        return int(await self.query("request_run", name, actor))

    async def set_enabled(
        self, name: str, enabled: bool, actor: Actor | None = None
    ) -> dict[str, Any]:
        await self.job(name)
        if enabled:
            await self.within(lambda store: _resume(store, name, actor))
        else:
            await self.query("set_enabled", name, False, None, actor)
        return await self.job(name)

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None


OUTPUT_LIMIT = 256 * 1024  # what one API answer carries of a run's output (its end)


def _read_output(home: Path, path: str | None, tail: str | None) -> str:
    """The run's output file (its last 256 KiB), or the tail kept in the database.

    Only a file below HOME/runs is read, and never through a symbolic link: the path
    comes from the database, and the API must not become a way to read other files
    (files.open_run_output)."""
    from pony_scheduler.files import UnsafePath, open_run_output

    if path:
        try:
            fd = open_run_output(home, path)
        except (OSError, UnsafePath) as exc:
            if isinstance(exc, UnsafePath):
                log.warning("Not reading run output: %s", exc)
        else:
            with os.fdopen(fd, "rb") as handle:
                handle.seek(0, 2)
                size = handle.tell()
                handle.seek(max(0, size - OUTPUT_LIMIT))
                return handle.read().decode(errors="replace")
    return tail or ""


def _resume(store: Any, name: str, actor: Actor | None) -> None:
    from pony_scheduler.jobs import resume_job
    from pony_scheduler.store.jobs import UnknownJob

    try:
        resume_job(store, name, store.db_now(), actor)  # the clock the schedulers judge by
    except UnknownJob:
        raise NotFound(f"no job named {name!r}") from None
