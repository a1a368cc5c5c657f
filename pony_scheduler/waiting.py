"""Short waits that do not depend on how the C library sleeps.

CPython 3.11's time.sleep() is clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME), which
libfaketime breaks (EINVAL) when only the wall clock is faked - the way the tests step
the system clock (FAKETIME_DONT_FAKE_MONOTONIC=1).  select() with no descriptors waits
just as well, so the daemons' polling loops use it.
"""

from __future__ import annotations

import os
import time


def pause(seconds: float) -> None:
    """Wait `seconds` (at least 0)."""
    import select  # here: `pb scheduler status` imports this module but never waits

    select.select([], [], [], max(0.0, seconds))


def wait_child(pid: int, timeout: float, step: float = 0.01) -> int | None:
    """Reap child `pid`, waiting up to `timeout` seconds; its wait status, or None if it
    has not exited by then (subprocess.Popen.wait(timeout) sleeps with time.sleep)."""
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        if time.monotonic() >= deadline:
            return None
        pause(step)
