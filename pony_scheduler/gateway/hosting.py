"""Serving asyncio code (aiohttp) under a ServiceRuntime; shared by gateway and debug server.

The runtime's design is synchronous: signal handlers only set flags and a wake-up fd makes
`runtime.sleep()` return at once.  So the main thread keeps that loop (it also reopens the
log on SIGHUP) and asyncio runs in one thread of its own, started inside the daemon.  The
listening sockets are bound in the main thread before that thread exists: errors such as
"address already in use" are then plain exceptions that reach `pb start` through the
readiness pipe, and the umask trick for the Unix socket touches no other thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import ipaddress
import logging
import os
import socket
import stat
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from pony_scheduler.config import validate_socket_path
from pony_scheduler.errors import PonyError
from pony_scheduler.files import PRIVATE_MODE
from pony_scheduler.gateway.refusals import RefusalLog, shown_path
from pony_scheduler.lifecycle.runtime import ServiceRuntime

log = logging.getLogger("pony_scheduler.gateway")

Cleanup = Callable[[], Awaitable[None]]
Setup = Callable[[], Awaitable[Cleanup]]

STOP_GRACE = 10.0  # seconds the event loop gets to close connections on shutdown


def http_address(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _why(exc: OSError, port: int) -> str:
    if exc.errno == errno.EADDRINUSE:
        return (
            f"address already in use (another program listens on port {port}; "
            "stop it or choose another --port)"
        )
    if exc.errno == errno.EACCES:
        return "permission denied (ports below 1024 need privileges; choose another --port)"
    if exc.errno == errno.EADDRNOTAVAIL:
        return "no such address on this host (check --host)"
    return (exc.strerror or str(exc)).lower()


def bind_tcp(host: str, port: int) -> list[socket.socket]:
    """Listening sockets for every address `host` resolves to (localhost: 127.0.0.1, ::1)."""
    address = http_address(host, port)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise PonyError(
            f"cannot listen on {address}: unknown host {host!r} ({exc.strerror}); check --host"
        ) from None
    if _is_localhost(host):
        # Browsers take localhost for both loopbacks whatever /etc/hosts says (RFC 6761
        # 6.3; Chromium tries ::1 first): a port left free on the other one would let
        # another local user's listener receive our login links and tokens there.
        infos = _both_loopbacks(port) + infos
    sockets: list[socket.socket] = []
    skipped: list[OSError] = []
    seen: set[tuple[int, str]] = set()
    for family, kind, proto, _, sockaddr in infos:
        if (family, str(sockaddr[0])) in seen:
            continue
        seen.add((family, str(sockaddr[0])))
        sock = socket.socket(family, kind | socket.SOCK_CLOEXEC, proto)
        try:
            # Lets a restarted server bind while old connections sit in TIME_WAIT; on Linux
            # it never lets two live listeners share the port.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(sockaddr)
            sock.listen(128)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            if exc.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT) and len(infos) > 1:
                skipped.append(exc)  # e.g. ::1 for "localhost" on a host without IPv6
                continue
            for other in sockets:
                other.close()
            raise PonyError(f"cannot listen on {address}: {_why(exc, port)}") from None
        sockets.append(sock)
    if not sockets:
        raise PonyError(
            f"cannot listen on {address}: "
            f"{_why(skipped[0], port) if skipped else 'no usable address'}"
        )
    return sockets


def _is_localhost(host: str) -> bool:
    name = host.lower().rstrip(".")
    return name == "localhost" or name.endswith(".localhost")


def _both_loopbacks(port: int) -> list[Any]:
    return [
        (socket.AF_INET, socket.SOCK_STREAM, 0, "", ("127.0.0.1", port)),
        (socket.AF_INET6, socket.SOCK_STREAM, 0, "", ("::1", port, 0, 0)),
    ]


def is_loopback(sock: socket.socket) -> bool:
    try:
        return ipaddress.ip_address(sock.getsockname()[0]).is_loopback
    except ValueError:
        return False


def bind_unix(path: Path) -> tuple[socket.socket, int]:
    """A listening Unix socket at `path`, mode 0600 from the moment it exists, and the
    inode of its file (to recognise it when removing it)."""
    validate_socket_path(path)
    try:
        info = path.lstat()
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(info.st_mode):
            raise PonyError(
                f"{path} exists and is not a socket; remove it or choose another --socket"
            )
        if _answers(path):
            raise PonyError(
                f"another process already listens on {path}; is a gateway "
                "for another home using it? choose another --socket"
            )
        path.unlink()  # left behind by a gateway that died: nobody listens on it
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    # No other thread exists yet, so changing the process umask here is safe; it closes
    # the window in which the socket would exist with looser permissions than 0600.
    old = os.umask(0o777 & ~PRIVATE_MODE)
    try:
        sock.bind(str(path))
    except OSError as exc:
        sock.close()
        raise PonyError(f"cannot listen on {path}: {exc.strerror}") from None
    finally:
        os.umask(old)
    os.chmod(path, PRIVATE_MODE)  # the project's one mode for sockets (files.py)
    sock.listen(64)
    sock.setblocking(False)
    return sock, os.stat(path).st_ino


def _answers(path: Path) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
    except OSError:
        return False
    finally:
        probe.close()
    return True


def remove_unix(path: Path, inode: int) -> None:
    """Remove our socket file, unless another gateway has replaced it meanwhile."""
    with contextlib.suppress(OSError):
        if os.stat(path).st_ino == inode:
            path.unlink()


def serve(runtime: ServiceRuntime, setup: Setup, *, name: str) -> None:
    """Run `setup()` on an event loop thread, announce readiness, wait for a stop request,
    then run the cleanup that `setup()` returned."""
    log = logging.getLogger(f"pony_scheduler.{name}")
    loop = asyncio.new_event_loop()
    started: concurrent.futures.Future[None] = concurrent.futures.Future()
    stop_event: list[asyncio.Event] = []

    async def lifetime() -> None:
        stop_event.append(asyncio.Event())
        try:
            cleanup = await setup()
        except BaseException as exc:
            started.set_exception(exc)
            return
        started.set_result(None)
        await stop_event[0].wait()
        try:
            await asyncio.wait_for(cleanup(), STOP_GRACE)
        except TimeoutError:
            log.warning("%s: connections still open after %gs; closing anyway", name, STOP_GRACE)

    def thread_main() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(lifetime())
        except BaseException as exc:  # reported below through `started` or the log
            if not started.done():
                started.set_exception(exc)
            else:
                log.error("%s event loop failed: %s", name, exc, exc_info=exc)
        finally:
            with contextlib.suppress(Exception):
                loop.close()
            runtime.wake()

    started.add_done_callback(lambda _: runtime.wake())
    thread = threading.Thread(target=thread_main, name=f"{name}-loop", daemon=True)
    thread.start()
    while not started.done():
        if runtime.stopping:  # sleep() no longer sleeps: wait on the future instead
            concurrent.futures.wait([started], timeout=STOP_GRACE)
            break
        runtime.sleep(60)
    # Raises what setup() raised, so that the start fails with that reason.
    started.result(timeout=0)
    runtime.ready()
    while not runtime.stopping and thread.is_alive():
        runtime.sleep(3600)
    if not thread.is_alive():
        raise PonyError(f"{name}: the event loop stopped unexpectedly (see the log)")
    log.info("Shutdown requested: closing connections")
    runtime.stopping_notice()
    with contextlib.suppress(RuntimeError):  # the loop already ended by itself
        loop.call_soon_threadsafe(stop_event[0].set)
    # Not runtime.sleep(): once stopping it returns at once, and this would spin.
    while thread.is_alive() and not runtime.stop_now:
        thread.join(0.2)
    if thread.is_alive():
        log.warning("Second stop request: not waiting for open connections")


# Requests that are not HTTP at all: aiohttp does not say from where, so they share one
# count (gateway/refusals.py); the services flush it with their own refusals.
PROTOCOL_ERRORS = RefusalLog(
    logging.getLogger("aiohttp.server"), what="requests that were not HTTP"
)


class _OneLine(logging.Filter):
    """aiohttp logs a full traceback for every request it cannot parse (a port scanner, a
    TLS client on the HTTP port).  That is the client's fault: one line is enough, and
    only a few a minute (anyone can send garbage as fast as they like)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            from aiohttp.http_exceptions import HttpProcessingError

            if isinstance(exc, HttpProcessingError):
                if not PROTOCOL_ERRORS.allow(time.monotonic(), "any address"):
                    return False
                detail = str(exc.message).strip().splitlines()
                record.msg = (
                    f"{record.getMessage()}: {type(exc).__name__}: "
                    f"{shown_path(detail[0]) if detail else ''}"
                )
                record.args = None
                record.exc_info = None
                record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def quiet_protocol_errors() -> None:
    logger = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, _OneLine) for f in logger.filters):
        logger.addFilter(_OneLine())
