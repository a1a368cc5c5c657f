"""The scheduler's work loop: sleeps until something is due, never busy-polls."""

from __future__ import annotations

import logging
import time

from pony_scheduler.lifecycle.runtime import ServiceRuntime
from pony_scheduler.store import Store

log = logging.getLogger("pony_scheduler.scheduler")

HEARTBEAT_INTERVAL = 5.0  # seconds between heartbeat rows (other schedulers read them)


class WorkLoop:
    def __init__(self, store: Store, runtime: ServiceRuntime) -> None:
        self.store = store
        self.runtime = runtime
        self.next_heartbeat = 0.0
        self.next_watchdog = 0.0

    def run(self) -> None:
        self.runtime.ready()
        while not self.runtime.stopping:
            self.tick(time.monotonic())
            self.runtime.sleep(self.seconds_until_next(time.monotonic()))
        self.shutdown()

    def tick(self, now: float) -> None:
        if now >= self.next_heartbeat:
            self.store.heartbeat()
            self.next_heartbeat = now + HEARTBEAT_INTERVAL
        interval = self.runtime.watchdog_interval()
        if interval is not None and now >= self.next_watchdog:
            self.runtime.watchdog()
            self.next_watchdog = now + interval

    def seconds_until_next(self, now: float) -> float:
        deadlines = [self.next_heartbeat]
        if self.runtime.watchdog_interval() is not None:
            deadlines.append(self.next_watchdog)
        return max(0.0, min(deadlines) - now)

    def shutdown(self) -> None:
        log.info("Shutdown requested: no new work will be started")
        self.runtime.stopping_notice()
        self.store.mark_stopped()
