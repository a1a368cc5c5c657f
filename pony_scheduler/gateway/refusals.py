"""Logging refused requests without letting the refused fill the disk.

Whoever can reach the gateway or the dashboard, which is every local user, can be refused
as fast as they can send: one WARNING with an 8 KB path per request grew gateway.log by
25 MB in 5 s.  So what is logged of a request is capped (`shown_path`: a path's first
MAX_PATH characters), and refusals are rate-limited per address, as a firewall's log
limit (iptables' `limit` match) or sshd's MaxStartups does: the first BURST lines of each
address in a window of WINDOW seconds are written, the rest are counted and summed up in
one line when the window ends ("N more refused requests from ADDRESS in the last
minute").  Only so many addresses are told apart (the whole of 127.0.0.0/8 is loopback);
beyond MAX_ADDRESSES they share one count.

Pure bookkeeping, with `now` passed in: the caller decides when to flush (each refusal
does, and the services call `flush` every few seconds).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

MAX_PATH = 200  # characters of a request path written to a log
BURST = 5  # refusal lines per address per window
WINDOW = 60.0  # seconds
MAX_ADDRESSES = 256
OTHERS = "other addresses"


def shown_path(path: str) -> str:
    """A request path as logs show it: at most MAX_PATH characters, and how many more."""
    if len(path) <= MAX_PATH:
        return path
    return f"{path[:MAX_PATH]}… ({len(path) - MAX_PATH} more characters)"


@dataclass
class _Window:
    started: float
    written: int = 0
    suppressed: int = 0


class RefusalLog:
    """Writes refusal lines to `logger`, BURST per address per WINDOW seconds."""

    def __init__(
        self,
        logger: logging.Logger,
        *,
        burst: int = BURST,
        window: float = WINDOW,
        max_addresses: int = MAX_ADDRESSES,
        what: str = "refused requests",
    ) -> None:
        self.logger = logger
        self.burst, self.window, self.max_addresses = burst, window, max_addresses
        self.what = what  # for the summary: "N more <what> from ADDRESS ..."
        self._windows: dict[str, _Window] = {}

    def refused(self, now: float, address: str | None, message: str, *args: object) -> bool:
        """Log `message % args` (a WARNING) unless `address` has used up its lines in this
        window; True when it was written.  `now`: seconds on a monotonic clock."""
        if not self.allow(now, address):
            return False
        self.logger.warning(message, *args)
        return True

    def allow(self, now: float, address: str | None) -> bool:
        """May one more line about `address` be written now?  Counted either way."""
        self.flush(now)
        key = address or "the Unix socket"
        if key not in self._windows and len(self._windows) >= self.max_addresses:
            key = OTHERS
        window = self._windows.setdefault(key, _Window(now))
        if window.written < self.burst:
            window.written += 1
            return True
        window.suppressed += 1
        return False

    def flush(self, now: float) -> None:
        """Sum up the windows that have ended (one line each, when something was not
        written) and forget them."""
        for key, window in list(self._windows.items()):
            if now - window.started < self.window:
                continue
            del self._windows[key]
            if window.suppressed:
                self.logger.warning(
                    "%d more %s from %s in the last %s",
                    window.suppressed,
                    self.what,
                    key,
                    "minute" if self.window == 60 else f"{self.window:g} s",
                )
