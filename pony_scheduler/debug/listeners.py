"""Who listens on a TCP address: read from /proc, before the dashboard sends a token there.

The gateway's metadata says where it listens, but a file cannot prove that the gateway
still holds that port: after it closed its listener (or before it bound one) any local user
may bind it.  The kernel can: /proc/net/tcp and tcp6 list each listening socket (state 0A)
with its inode, and /proc/PID/fd of the gateway links to `socket:[inode]` when the gateway
holds it.  While it does, Linux lets no other user bind that address (SO_REUSEPORT is
refused across users), so the port is the gateway's.
"""

from __future__ import annotations

import ipaddress
import os
import struct
from pathlib import Path

LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp's "st" column
TABLES = {4: "/proc/net/tcp", 6: "/proc/net/tcp6"}  # by IP version

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def _decode(field: str) -> tuple[Address, int]:
    """The field "0100007F:1F90" is (127.0.0.1, 8080): the kernel prints the address as 32-bit
    words in host byte order, the port as a plain number."""
    host, port = field.split(":")
    words = [int(host[i : i + 8], 16) for i in range(0, len(host), 8)]
    raw = b"".join(struct.pack("=I", word) for word in words)
    return ipaddress.ip_address(raw), int(port, 16)


def listening_inodes(address: Address, port: int) -> set[int]:
    """The inodes of the sockets listening on exactly (address, port)."""
    found: set[int] = set()
    try:
        lines = Path(TABLES[address.version]).read_text().splitlines()[1:]
    except OSError:
        return found  # no IPv6 on this host: nothing listens there
    for line in lines:
        fields = line.split()
        if len(fields) < 10 or fields[3] != LISTEN:
            continue
        if _decode(fields[1]) == (address, port):
            found.add(int(fields[9]))
    return found


def holds(pid: int, inodes: set[int]) -> bool:
    """Does process `pid` have one of the sockets `inodes` open?"""
    wanted = {f"socket:[{inode}]" for inode in inodes}
    fd_dir = f"/proc/{pid}/fd"
    try:
        names = os.listdir(fd_dir)
    except OSError:
        return False
    for name in names:
        try:
            if os.readlink(f"{fd_dir}/{name}") in wanted:
                return True
        except OSError:
            continue  # closed meanwhile
    return False


def owner_listens(pid: int, host: str, port: int) -> bool:
    """Does `pid` hold a listening socket on the IP address `host` and `port`?"""
    return holds(pid, listening_inodes(ipaddress.ip_address(host), port))


def held_address(pid: int, url: str) -> tuple[str, int] | None:
    """(IP literal, port) of URL `url`'s host on which process `pid` itself listens right
    now, or None when it listens on none of the addresses the name resolves to.  Connect to
    that IP: the socket checked is then the socket used.  Raises ValueError (no host or
    port) and OSError (the name does not resolve)."""
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    host, port = parts.hostname, parts.port
    if not host or port is None:
        raise ValueError("no host or port")
    # One short lookup (usually "localhost", from /etc/hosts).
    for *_, sockaddr in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
        if owner_listens(pid, str(sockaddr[0]), port):
            return str(sockaddr[0]), port
    return None
