"""What the lifecycle needs to know about one service."""

import importlib
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

if TYPE_CHECKING:
    from pathlib import Path

    from pony_scheduler.config import Settings
    from pony_scheduler.lifecycle.runtime import ServiceRuntime

# The files of a home as the home is given: str for `pb NAME status`, which does without
# pathlib (config.Settings says why), Path for everyone else.
Home = TypeVar("Home", str, "Path")


def in_home(home: Home, name: str) -> Home:
    return os.path.join(home, name) if isinstance(home, str) else home / name


# The records of this package are NamedTuples, not dataclasses: `pb scheduler status`
# imports them, and building a dataclass costs ~0.3-1 ms at import (docs/BENCHMARKS.md).
class ServiceSpec(NamedTuple):
    name: str  # file stem: scheduler.pid, scheduler.json, scheduler.log
    title: str  # what users read: "Scheduler", "Debug Server"
    # "module:function" strings so that heavy modules are imported only inside the daemon.
    runner: str  # run(runtime) -> None; calls runtime.ready() once serving
    preflight: str | None = None  # check(settings) -> None; raises PonyError before forking
    describe: str | None = None  # metadata(settings) -> dict of extra fields for scheduler.json
    # (label, metadata key) pairs that start and status print for this service
    details: tuple[tuple[str, str], ...] = ()
    # A corrupt database stops it in order (it can do nothing useful without one).
    stops_on_corrupt_database: bool = False
    # beside(settings) -> None: what `start` does in its own process while the daemon it
    # forked starts up (best effort: errors are the daemon's to report).
    beside: str | None = None
    # check(settings) -> None: before a running instance is replaced (restart, start
    # --force), whether the new one can take over from it; raises PonyError if not.
    handover_check: str | None = None

    def pid_path(self, home: Home) -> Home:
        return in_home(home, f"{self.name}.pid")

    def meta_path(self, home: Home) -> Home:
        return in_home(home, f"{self.name}.json")

    def log_path(self, home: Home) -> Home:
        return in_home(home, f"{self.name}.log")

    def start_lock_path(self, home: Home) -> Home:
        return in_home(home, f".{self.name}.start.lock")

    def load(self, attribute: str) -> Callable[..., Any]:
        module, _, function = attribute.partition(":")
        return getattr(importlib.import_module(module), function)

    def run_preflight(self, settings: "Settings") -> None:
        if self.preflight:
            self.load(self.preflight)(settings)

    def check_handover(self, settings: "Settings") -> None:
        if self.handover_check:
            self.load(self.handover_check)(settings)

    def run_beside(self, settings: "Settings") -> None:
        if self.beside:
            self.load(self.beside)(settings)

    def extra_metadata(self, settings: "Settings") -> dict[str, Any]:
        return self.load(self.describe)(settings) if self.describe else {}

    def run(self, runtime: "ServiceRuntime") -> None:
        self.load(self.runner)(runtime)


SCHEDULER = ServiceSpec(
    name="scheduler",
    title="Scheduler",
    runner="pony_scheduler.scheduler.service:run",
    preflight="pony_scheduler.scheduler.service:preflight",
    describe="pony_scheduler.scheduler.service:describe",
    details=(("Database", "dbPath"), ("Socket", "socketPath")),
    stops_on_corrupt_database=True,
    beside="pony_scheduler.scheduler.service:start_keeper",
    handover_check="pony_scheduler.scheduler.service:check_handover",
)

GATEWAY = ServiceSpec(
    name="gateway",
    title="Gateway",
    runner="pony_scheduler.gateway.service:run",
    preflight="pony_scheduler.gateway.service:preflight",
    handover_check="pony_scheduler.gateway.service:check_handover",
    describe="pony_scheduler.gateway.service:describe",
    details=(
        ("Address", "address"),
        ("Socket", "socketPath"),
        ("Database", "dbPath"),
        ("Token", "tokenPath"),
    ),
)

DEBUG = ServiceSpec(
    name="debug",
    title="Debug Server",
    runner="pony_scheduler.debug.service:run",
    preflight="pony_scheduler.debug.service:preflight",
    handover_check="pony_scheduler.debug.service:check_handover",
    describe="pony_scheduler.debug.service:describe",
    details=(("Address", "address"),),
)

# In start order: the scheduler reports to the gateway, the dashboard reads from it.
SERVICES: dict[str, ServiceSpec] = {spec.name: spec for spec in (GATEWAY, SCHEDULER, DEBUG)}
