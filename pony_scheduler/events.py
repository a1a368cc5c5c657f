"""The scheduler's side of the event stream: a client for the gateway's Unix socket.

The scheduler must never wait for the gateway, which may be stopped, restarting or slow.
So `emit()` only appends to a bounded in-memory buffer (the oldest event is dropped when
it is full) and pokes a pipe; one background thread owns the socket, connects, sends and
reconnects with backoff.  Nothing here raises into the scheduler.

Wire format (one JSON object per line, UTF-8, newline-delimited):

    {"type": "run.started", "timestamp": "2024-05-01T12:00:00.123Z", "data": {...}}

`timestamp` is when the scheduler emitted the event: ISO 8601 in UTC with milliseconds and
a `Z` suffix (readable in logs, sortable as text, parsed by every JSON consumer).  Each
(re)connection starts with a `connect` event carrying the scheduler's pid and how many
events were dropped while the gateway was unreachable; `close()` sends `disconnect`.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import select
import socket
import struct
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

from pony_scheduler import __version__

log = logging.getLogger("pony_scheduler.events")

BACKOFF_FIRST = 1.0
BACKOFF_MAX = 30.0
SEND_TIMEOUT = 5.0  # a gateway that stops reading for this long is treated as gone


def timestamp(now: float | None = None) -> str:
    """ISO 8601 UTC with milliseconds."""
    now = time.time() if now is None else now
    millis = int(now * 1000) % 1000
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{millis:03d}Z"


def encode(event: dict[str, Any]) -> bytes:
    # Buffered events carry time.time(): formatting it costs more than the rest of emit()
    # and is wasted on events dropped while the gateway is down.
    if isinstance(event.get("timestamp"), float):
        event = {**event, "timestamp": timestamp(event["timestamp"])}
    # default=str: a caller's datetime or Path must not kill the sender thread.
    return (json.dumps(event, default=str, separators=(",", ":")) + "\n").encode()


def _check_peer(sock: socket.socket, path: Path) -> None:
    """Send events (job names, PIDs) only to a gateway of our own user or root: a
    `--socket` outside the home could have been bound by someone else first."""
    pid, uid, _ = struct.unpack(
        "3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    )
    if uid not in (os.geteuid(), 0):
        raise PermissionError(
            errno.EACCES, f"{path} is served by PID {pid} of uid {uid}, not by our gateway"
        )


class EventClient:
    def __init__(self, socket_path: Path, *, max_buffer: int = 1000) -> None:
        self.socket_path = Path(socket_path)
        self._buffer: deque[dict[str, Any]] = deque(maxlen=max(1, max_buffer))
        self._lock = threading.Lock()
        self._closing = False
        self._thread: threading.Thread | None = None
        self._wake_r = self._wake_w = -1
        self._deadline = 0.0  # when close() stops trying to flush
        self.dropped = 0  # events lost to the bound since the last connection
        self.connected = False
        self.connections = 0
        self._said_down = False  # log "unreachable" once per outage, not once per attempt

    # -- the scheduler's side ----------------------------------------------------------------
    def start(self) -> None:
        """Start the sender thread.  Call inside the daemon, after daemonizing."""
        if self._thread is not None:
            return
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._thread = threading.Thread(target=self._run, name="pony-events", daemon=True)
        self._thread.start()

    def emit(self, type: str, data: dict[str, Any]) -> None:
        """Queue an event; never blocks on the network, never raises."""
        try:
            event = {"type": str(type), "timestamp": time.time(), "data": dict(data or {})}
            with self._lock:
                if self._closing:
                    return
                if len(self._buffer) == self._buffer.maxlen:
                    self.dropped += 1
                self._buffer.append(event)
            if self.connected:  # else the sender is backing off and emits don't cut it short
                self._wake()
        except Exception:  # an event is never worth disturbing the scheduler
            log.debug("Could not queue event %r", type, exc_info=True)

    def close(self, timeout: float = 2.0) -> None:
        """Send `disconnect`, flush what fits in `timeout` seconds, stop the thread."""
        with self._lock:
            if self._closing:
                return
            self._closing = True
            self._deadline = time.monotonic() + max(0.0, timeout)
            self._buffer.append(
                {"type": "disconnect", "timestamp": timestamp(), "data": {"pid": os.getpid()}}
            )
        if self._thread is None:
            return
        self._wake()
        self._thread.join(max(0.0, timeout) + 0.5)
        if self._thread.is_alive():
            # Stuck in a send: leave it (a daemon thread) and its pipe alone; closing fds a
            # thread still selects on could make it read from whatever reuses the numbers.
            log.warning("Gave up flushing events to the gateway after %gs", timeout)
            return
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._wake_r = self._wake_w = -1

    def _wake(self) -> None:
        if self._wake_w >= 0:
            # BlockingIOError: the pipe already holds wake-ups; OSError: closed by close().
            with contextlib.suppress(OSError):
                os.write(self._wake_w, b"!")

    # -- the sender thread -------------------------------------------------------------------
    def _run(self) -> None:
        backoff = BACKOFF_FIRST
        while True:
            sock = self._connect()
            if sock is not None:
                backoff = BACKOFF_FIRST
                with contextlib.closing(sock):
                    self._serve(sock)
                self.connected = False
            if self._closing:
                return
            # Down or gone: wait (events keep buffering) and try again, later each time.
            self._pause(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX)

    def _pause(self, seconds: float) -> None:
        """Back off for `seconds`; emits do not cut it short (a heartbeat every 5 s would
        otherwise defeat the backoff), close() does: it makes one last attempt to flush."""
        deadline = time.monotonic() + seconds
        while not self._closing:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._wait(remaining, sock=None)

    def _connect(self) -> socket.socket | None:
        if self._closing and time.monotonic() >= self._deadline:
            return None
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.settimeout(SEND_TIMEOUT)
        try:
            sock.connect(str(self.socket_path))
            _check_peer(sock, self.socket_path)
            with self._lock:
                dropped, self.dropped = self.dropped, 0
            self.connections += 1
            sock.sendall(
                encode(
                    {
                        "type": "connect",
                        "timestamp": timestamp(),
                        "data": {
                            "pid": os.getpid(),
                            "hostname": socket.gethostname(),
                            "version": __version__,
                            "dropped": dropped,
                            "connection": self.connections,
                        },
                    }
                )
            )
        except OSError as exc:
            sock.close()
            if not self._said_down and not self._closing:
                log.info(
                    "Gateway not reachable at %s (%s); buffering events and retrying "
                    "(every %g s at most)",
                    self.socket_path,
                    exc.strerror or exc,
                    BACKOFF_MAX,
                )
                self._said_down = True
            return None
        self.connected, self._said_down = True, False
        log.info("Connected to the gateway at %s", self.socket_path)
        return sock

    def _serve(self, sock: socket.socket) -> None:
        """Send everything buffered; return when the connection breaks or we are done."""
        while True:
            with self._lock:
                event = self._buffer[0] if self._buffer else None
            if event is None:
                if self._closing:
                    return
                if not self._wait(None, sock=sock):
                    log.info("Gateway closed the event connection; reconnecting")
                    return
                continue
            if self._closing:
                remaining = self._deadline - time.monotonic()
                if remaining <= 0:
                    return
                sock.settimeout(min(remaining, SEND_TIMEOUT))
            try:
                line = encode(event)
            except (TypeError, ValueError) as exc:  # e.g. a dict with non-string keys
                log.warning("Dropped an event that is not JSON (%s): %.200r", exc, event)
                line = b""
            try:
                sock.sendall(line)
            except OSError as exc:
                # The event stays at the head of the buffer and goes out after reconnecting.
                log.info("Lost the gateway connection (%s); reconnecting", exc)
                return
            with self._lock:
                if self._buffer and self._buffer[0] is event:
                    self._buffer.popleft()

    def _wait(self, seconds: float | None, sock: socket.socket | None) -> bool:
        """Sleep until an emit, close(), the timeout, or (with a socket) its EOF.

        Returns False when the gateway closed the connection: noticing that at once, not
        at the next heartbeat, is what makes a gateway restart quick to recover from."""
        watched = [self._wake_r] + ([sock] if sock is not None else [])
        readable, _, _ = select.select(watched, [], [], seconds)
        if self._wake_r in readable:
            with contextlib.suppress(OSError):
                while os.read(self._wake_r, 4096):
                    pass
        if sock is not None and sock in readable:
            try:
                return sock.recv(4096, socket.MSG_DONTWAIT) != b""
            except BlockingIOError:
                return True
            except OSError:
                return False
        return True
