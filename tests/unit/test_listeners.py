"""debug/listeners.py: who holds a listening TCP socket, from /proc; and the gateway's
metadata, which names its TCP address only once it listens (gateway/service.py)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from pony_scheduler.config import load_settings
from pony_scheduler.debug.listeners import owner_listens
from pony_scheduler.gateway.service import describe

# Another process's listener: prints its port, then waits for stdin to close.
LISTEN = (
    "import socket, sys; s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(1); "
    "print(s.getsockname()[1], flush=True); sys.stdin.read()"
)


def test_our_own_listeners_are_ours() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        assert not owner_listens(os.getpid(), "127.0.0.1", port)  # bound, not listening
        sock.listen(1)
        assert owner_listens(os.getpid(), "127.0.0.1", port)
        assert not owner_listens(os.getpid(), "127.0.0.2", port)  # not that exact address
    assert not owner_listens(os.getpid(), "127.0.0.1", port)  # closed


def test_ipv6_listeners() -> None:
    try:
        sock = socket.socket(socket.AF_INET6)
        sock.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback here")
    with sock:
        sock.listen(1)
        assert owner_listens(os.getpid(), "::1", sock.getsockname()[1])


def test_another_process_listener_is_not_ours() -> None:
    other = subprocess.Popen(
        [sys.executable, "-c", LISTEN], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert other.stdout is not None
        port = int(other.stdout.readline())
        assert owner_listens(other.pid, "127.0.0.1", port)
        assert not owner_listens(os.getpid(), "127.0.0.1", port)
    finally:
        assert other.stdin is not None
        other.stdin.close()
        other.wait(timeout=30)


def test_the_gateway_names_no_address_before_it_listens(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    assert "address" not in describe(load_settings(home=home))
