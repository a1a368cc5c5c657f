"""Which host this is: its machine id and boot id, never its hostname.

Cloned VMs and containers share hostnames; machine-id(5) names the installation and the
kernel's boot id names this boot of it, so "the same host, still up since then" is
exactly "the same machine id and the same boot id".
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pony_scheduler.lifecycle.pidfile import boot_id

MACHINE_ID_FILES = ("/etc/machine-id", "/var/lib/dbus/machine-id")
# Seconds this host's clock may be from the database's before the log and `pb scheduler
# status` say so (leases and due times follow the database's clock either way).
CLOCK_WARN_S = 2.0


@lru_cache(maxsize=1)
def machine_id() -> str:
    """machine-id(5), or "" where the system has none."""
    for path in MACHINE_ID_FILES:
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text:
            return text
    return ""


def host_id() -> str:
    """machine id:boot id, the identity runs and schedulers are recorded with."""
    return f"{machine_id()}:{boot_id()}"


def same_machine(host: str | None) -> bool:
    """Whether `host` (a host_id) names this machine, whatever its boot."""
    return bool(host) and host.partition(":")[0] == machine_id()  # type: ignore[union-attr]
