"""`pb service`: the three services as one — start in order, stop in reverse, report.

Only orchestration lives here; every step is the same `control.start/stop/status` that
`pb gateway|scheduler|debug ...` run, so the services behave identically either way.
Knows nothing about click: results go back as `Outcome`s and through `report`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pony_scheduler.config import Settings
from pony_scheduler.errors import EXIT_FAILURE, EXIT_NOT_RUNNING, EXIT_OK, PonyError
from pony_scheduler.lifecycle import control
from pony_scheduler.lifecycle.control import AlreadyRunning, StartFailed
from pony_scheduler.lifecycle.spec import SERVICES, ServiceSpec
from pony_scheduler.lifecycle.status import Status, status

ALL = "all"
NAMES = (ALL, *SERVICES)


@dataclass
class Outcome:
    spec: ServiceSpec
    # started | running (already was) | failed | skipped | stopped | not-running
    result: str
    exit_code: int = EXIT_OK
    pid: int | None = None
    meta: dict[str, Any] | None = None
    message: str = ""
    log_tail: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.exit_code == EXIT_OK


Report = Callable[[Outcome], None]


def select(name: str) -> list[ServiceSpec]:
    """The services `name` means, in start order."""
    if name == ALL:
        return list(SERVICES.values())
    if name not in SERVICES:
        raise PonyError(f"unknown service {name!r}; choose one of {', '.join(NAMES)}", 2)
    return [SERVICES[name]]


def start(
    specs: list[ServiceSpec],
    settings: Settings,
    *,
    timeout: float,
    report: Report = lambda _: None,
    replace: bool = False,
) -> list[Outcome]:
    """Start each in turn, each waited for until ready; stop at the first failure (the
    later ones depend on the earlier: the scheduler reports to the gateway, the dashboard
    reads from it).  One that already runs counts as started."""
    outcomes: list[Outcome] = []
    failed: Outcome | None = None
    for spec in specs:
        if failed is not None:
            outcome = Outcome(
                spec,
                "skipped",
                failed.exit_code,
                message=f"not started because {failed.spec.title} failed",
            )
        else:
            outcome = _start_one(spec, settings, timeout, replace)
            failed = None if outcome.ok else outcome
        outcomes.append(outcome)
        report(outcome)
    return outcomes


def _start_one(
    spec: ServiceSpec, settings: Settings, timeout: float, replace: bool = False
) -> Outcome:
    try:
        result = control.start(spec, settings, timeout=timeout, force=replace)
    except AlreadyRunning as exc:
        return Outcome(spec, "running", pid=exc.info.pid, meta=exc.info.meta)
    except StartFailed as exc:
        return Outcome(spec, "failed", exc.exit_code, message=str(exc), log_tail=exc.log_tail)
    except PonyError as exc:
        return Outcome(
            spec, "failed", exc.exit_code, message=f"{spec.title} failed to start: {exc}"
        )
    return Outcome(spec, "started", pid=result.pid, meta=result.meta)


START_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0


def stop_timeout(spec: ServiceSpec, settings: Settings) -> float:
    """What `pb NAME stop` waits by default: the scheduler lets running jobs finish first.
    After the shutdown grace, jobs get SIGTERM and, the keeper's one kill grace later,
    SIGKILL; then their outcomes are recorded and it exits: three kill graces cover it.
    The grace is the running scheduler's (its NAME.json), which may differ from this
    command's settings (`start --shutdown-grace 70`: a stop gave up after 45 s while it
    drained; review finding)."""
    if spec.name == "scheduler":
        from pony_scheduler.keeper.protocol import KILL_GRACE_S
        from pony_scheduler.lifecycle.pidfile import live_meta

        running = (live_meta(spec.meta_path(settings.home_dir)) or {}).get("shutdownGrace")
        grace = settings.shutdown_grace
        if isinstance(running, (int, float)) and not isinstance(running, bool):
            grace = max(grace, float(running))
        return grace + 3 * KILL_GRACE_S
    return STOP_TIMEOUT


def stop(
    specs: list[ServiceSpec],
    settings: Settings,
    *,
    timeout: float | None = None,
    force: bool = False,
    report: Report = lambda _: None,
) -> list[Outcome]:
    """Stop in reverse start order; go on past a failure, so as much as possible stops.
    Without `timeout`, each service gets its own default (`stop_timeout`)."""
    outcomes: list[Outcome] = []
    for spec in reversed(specs):
        wait = timeout if timeout is not None else stop_timeout(spec, settings)
        try:
            result = control.stop(spec, settings, timeout=wait, force=force, say=lambda _: None)
        except PonyError as exc:
            outcome = Outcome(spec, "failed", exc.exit_code or EXIT_FAILURE, message=str(exc))
        else:
            outcome = (
                Outcome(spec, "stopped", pid=result.pid)
                if result.was_running
                else Outcome(spec, "not-running", message=result.note)
            )
        outcomes.append(outcome)
        report(outcome)
    return outcomes


def restart(
    specs: list[ServiceSpec],
    settings: Settings,
    *,
    timeout: float | None = None,
    report: Report = lambda _: None,
) -> list[Outcome]:
    """Replace each in start order, as `pb NAME restart` does: the old process hands over
    (the scheduler's runs keep running under the run keeper) and a new one starts."""
    return start(specs, settings, timeout=timeout or START_TIMEOUT, report=report, replace=True)


def exit_code(outcomes: list[Outcome]) -> int:
    return next((outcome.exit_code for outcome in outcomes if not outcome.ok), EXIT_OK)


# -- status ------------------------------------------------------------------------------
def statuses(specs: list[ServiceSpec], settings: Settings) -> list[Status]:
    return [status(spec, settings) for spec in specs]


def status_exit_code(reports: list[Status]) -> int:
    """0 when every named service runs, 3 otherwise (`pb service status`)."""
    return EXIT_OK if all(r.state == "running" for r in reports) else EXIT_NOT_RUNNING


def summary(report: Status) -> dict[str, Any]:
    meta = report.meta or {}
    uptime = report.uptime()
    return {
        "service": report.spec.name,
        "title": report.spec.title,
        "state": report.state,
        "running": report.state == "running",
        "pid": report.pid,
        "uptimeSeconds": round(uptime, 3) if uptime is not None else None,
        "address": meta.get("address"),
        "startedAt": meta.get("startedAt"),
        "mode": meta.get("mode"),
        "reason": report.reason or None,
    }


def summaries(settings: Settings) -> list[dict[str, Any]]:
    """Every service's state, read from pid files alone (for the gateway and dashboard)."""
    return [summary(report) for report in statuses(list(SERVICES.values()), settings)]
