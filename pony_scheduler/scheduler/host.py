"""Which host this is: its machine id, boot id and pid namespace, never its hostname.

Cloned VMs and containers share hostnames; machine-id(5) names the installation and the
kernel's boot id names this boot of it, so "the same host, still up since then" is
the same machine id and the same boot id.  Containers on one kernel share its boot id
(and often the machine id, bind-mounted or absent), so the pid namespace (pid_namespaces(7))
is part of the identity: a process table says whether a scheduler lives only where its
pid is one we can see.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

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


@lru_cache(maxsize=1)
def pid_namespace() -> str:
    """The inode number of this process's pid namespace (pid_namespaces(7)), "" if
    /proc does not say."""
    try:
        link = os.readlink("/proc/self/ns/pid")  # "pid:[4026531836]"
    except OSError:
        return ""
    return link.partition("[")[2].rstrip("]")


def host_id() -> str:
    """machine id:boot id:pid namespace, the identity runs are recorded with: a run's
    processes may be signalled only by a scheduler with the same one."""
    return f"{machine_id()}:{boot_id()}:{pid_namespace()}"


def sees_processes_of(row: Mapping[str, Any]) -> bool:
    """Whether this process can tell from its process table if the scheduler recorded in
    `row` (a schedulers row: machine_id, boot_id, pid_ns) lives: the same machine, boot
    and pid namespace.  A row from before pid namespaces were recorded (pid_ns NULL) is
    taken as ours when machine and boot match, as it was then."""
    return (
        row["machine_id"] == machine_id()
        and row["boot_id"] == boot_id()
        and row.get("pid_ns") in (None, pid_namespace())
    )
