"""Finding cgroup hierarchies from /proc/self/mountinfo and /proc/self/cgroup texts:
v2 only, hybrid (like the CI machine), v1 only, none, and inside a container; reading a
run's small cgroup files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pony_scheduler.keeper.cgroups import (
    Hierarchy,
    find_hierarchies,
    parse_cpu_max,
    parse_mountinfo,
    parse_proc_cgroup,
    populated,
    read_small,
    usage_seconds,
)
from pony_scheduler.keeper.containment import Cgroups, ContainmentError

V2_ONLY = """\
22 28 0:21 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
28 1 252:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw,errors=remount-ro
26 22 0:24 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 \
rw,nsdelegate,memory_recursiveprot
"""
V2_ONLY_CGROUP = "0::/system.slice/pony-scheduler.service\n"

HYBRID = """\
23 1 253:0 / / rw,relatime - ext4 /dev/vda rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
36 31 0:33 / /sys/fs/cgroup/devices rw,relatime - cgroup cgroup rw,devices
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
38 31 0:35 / /sys/fs/cgroup/blkio rw,relatime - cgroup cgroup rw,blkio
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""
HYBRID_CGROUP = """\
9:name=systemd:/
8:pids:/
7:blkio:/
6:freezer:/
5:devices:/
4:memory:/process_api/d5ca567f8c62c93acd046e76b186246a
3:cpuset:/
2:cpuacct:/
1:cpu:/
0::/
"""

V1_ONLY = """\
18 60 0:17 / /sys rw,nosuid,nodev,noexec,relatime shared:6 - sysfs sysfs rw
24 18 0:20 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:7 - tmpfs tmpfs ro,mode=755
25 24 0:21 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:8 - cgroup \
cgroup rw,xattr,release_agent=/usr/lib/systemd/systemd-cgroups-agent,name=systemd
28 24 0:24 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:11 - cgroup \
cgroup rw,cpu,cpuacct
30 24 0:26 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:13 - cgroup \
cgroup rw,memory
33 24 0:29 / /sys/fs/cgroup/pids rw,nosuid,nodev,noexec,relatime shared:16 - cgroup \
cgroup rw,pids
"""
V1_ONLY_CGROUP = """\
11:pids:/system.slice/crond.service
6:memory:/system.slice/crond.service
4:cpu,cpuacct:/system.slice/crond.service
1:name=systemd:/system.slice/crond.service
"""


def test_mountinfo_lines() -> None:
    mounts = parse_mountinfo(V1_ONLY)
    assert [m.mount_point for m in mounts] == [
        "/sys/fs/cgroup/systemd",
        "/sys/fs/cgroup/cpu,cpuacct",
        "/sys/fs/cgroup/memory",
        "/sys/fs/cgroup/pids",
    ]
    assert mounts[1].super_options == ("rw", "cpu", "cpuacct")
    assert parse_proc_cgroup(V1_ONLY_CGROUP)["cpu,cpuacct"] == "/system.slice/crond.service"


def test_v2_only() -> None:
    assert find_hierarchies(V2_ONLY, V2_ONLY_CGROUP) == [
        Hierarchy(2, (), "/sys/fs/cgroup", "/sys/fs/cgroup/system.slice/pony-scheduler.service")
    ]


def test_hybrid_like_this_machine() -> None:
    """v2 at /sys/fs/cgroup/unified without controllers, the controllers in v1; the
    memory group is a sub-group (a sandbox), the others the root; name=systemd is not
    ours to use, cpuset/devices/blkio are not wanted."""
    found = find_hierarchies(HYBRID, HYBRID_CGROUP)
    assert found == [
        Hierarchy(1, ("cpu",), "/sys/fs/cgroup/cpu", "/sys/fs/cgroup/cpu"),
        Hierarchy(1, ("cpuacct",), "/sys/fs/cgroup/cpuacct", "/sys/fs/cgroup/cpuacct"),
        Hierarchy(
            1,
            ("memory",),
            "/sys/fs/cgroup/memory",
            "/sys/fs/cgroup/memory/process_api/d5ca567f8c62c93acd046e76b186246a",
        ),
        Hierarchy(1, ("freezer",), "/sys/fs/cgroup/freezer", "/sys/fs/cgroup/freezer"),
        Hierarchy(1, ("pids",), "/sys/fs/cgroup/pids", "/sys/fs/cgroup/pids"),
        Hierarchy(2, (), "/sys/fs/cgroup/unified", "/sys/fs/cgroup/unified"),
    ]


def test_v1_only_with_co_mounted_controllers() -> None:
    found = find_hierarchies(V1_ONLY, V1_ONLY_CGROUP)
    assert [(h.version, h.controllers, h.own) for h in found] == [
        (1, ("cpu", "cpuacct"), "/sys/fs/cgroup/cpu,cpuacct/system.slice/crond.service"),
        (1, ("memory",), "/sys/fs/cgroup/memory/system.slice/crond.service"),
        (1, ("pids",), "/sys/fs/cgroup/pids/system.slice/crond.service"),
    ]


def test_no_cgroups_at_all() -> None:
    assert find_hierarchies("28 1 252:1 / / rw - ext4 /dev/vda1 rw\n", "") == []
    assert find_hierarchies(V2_ONLY, "") == []  # no line for us: nothing usable


def test_a_container_sees_a_subtree() -> None:
    """The mount's root is the container's group: paths are relative to it, and a group
    outside it is not reachable at all."""
    mountinfo = "700 600 0:29 /docker/abc /sys/fs/cgroup ro,nosuid - cgroup2 cgroup2 rw\n"
    assert find_hierarchies(mountinfo, "0::/docker/abc/inner\n") == [
        Hierarchy(2, (), "/sys/fs/cgroup", "/sys/fs/cgroup/inner")
    ]
    assert find_hierarchies(mountinfo, "0::/docker/abc\n")[0].own == "/sys/fs/cgroup"
    assert find_hierarchies(mountinfo, "0::/elsewhere\n") == []


def test_escaped_mount_points() -> None:
    text = "41 31 0:38 / /sys/fs/cgroup/with\\040space rw - cgroup2 cgroup2 rw\n"
    assert parse_mountinfo(text)[0].mount_point == "/sys/fs/cgroup/with space"


def test_cpu_max_in_cpus() -> None:
    assert parse_cpu_max(0.5) == (50_000, 100_000)  # systemd CPUQuota=50%
    assert parse_cpu_max(2) == (200_000, 100_000)
    assert parse_cpu_max(0.001) == (1000, 100_000)  # the kernel's minimum quota


def test_cpu_usage_from_cpu_stat() -> None:
    text = b"usage_usec 1577\nuser_usec 1000\nsystem_usec 577\nnr_periods 0\n"
    assert usage_seconds(text) == 0.001577
    assert usage_seconds(b"nr_periods 0\nusage_usec 2000000\n") == 2.0
    assert usage_seconds(b"user_usec 5\n") is None
    assert usage_seconds(b"usage_usec x\n") is None
    assert usage_seconds(b"") is None


def test_small_cgroup_files_in_one_read(tmp_path: Path) -> None:
    """cgroup.events as the kernel shows it: populated or not; None where it is not."""
    (tmp_path / "cgroup.events").write_bytes(b"populated 0\nfrozen 0\n")
    assert read_small(str(tmp_path / "cgroup.events")) == b"populated 0\nfrozen 0\n"
    assert populated(str(tmp_path)) is False
    (tmp_path / "cgroup.events").write_bytes(b"populated 1\nfrozen 0\n")
    assert populated(str(tmp_path)) is True
    assert populated(str(tmp_path / "missing")) is None
    assert read_small(str(tmp_path / "missing")) is None


def _cgroups(mode: str, notes: list[str]) -> Cgroups:
    """A Cgroups as discovery would leave it (without touching the machine's)."""
    cg = Cgroups.__new__(Cgroups)
    cg.mode, cg.notes = mode, notes
    return cg


UNPRIVILEGED = [
    "cgroup2: /sys/fs/cgroup/unified/pony-x: Permission denied",
    "cgroup v1 cpu: /sys/fs/cgroup/cpu/pony-x: Permission denied",
    "cgroup v1 pids: /sys/fs/cgroup/pids/pony-x: Permission denied",
    "cgroup v1 memory: /sys/fs/cgroup/memory/pony-x: Permission denied",
]


def test_why_a_containment_is_less_than_cgroup2_is_short() -> None:
    """For status and the log (review: status never said why; the refusal listed every
    v1 hierarchy, though cgroup2 was asked for)."""
    assert _cgroups("cgroup2", []).why() == ""
    assert _cgroups("pgroup", UNPRIVILEGED).why() == (
        f"{UNPRIVILEGED[0]}; {UNPRIVILEGED[1]} (and 2 more v1 hierarchies: see keeper.log)"
    )
    assert _cgroups("cgroup1", UNPRIVILEGED[:1]).why() == UNPRIVILEGED[0]
    assert _cgroups("pgroup", ["pgroup asked for"]).why() == "pgroup asked for"


def test_a_refused_containment_names_only_its_own_reasons(monkeypatch: Any) -> None:
    from pony_scheduler.keeper import containment

    monkeypatch.setattr(containment.cgroups, "discover", lambda: [])
    monkeypatch.setattr(
        Cgroups, "_setup_v2", lambda self, found: self.notes.append(UNPRIVILEGED[0])
    )
    monkeypatch.setattr(
        Cgroups, "_setup_v1", lambda self, found: self.notes.extend(UNPRIVILEGED[1:])
    )
    with pytest.raises(ContainmentError) as refused:
        Cgroups("/nonexistent-home", "cgroup2")
    assert str(refused.value) == f"containment cgroup2 is not possible here: {UNPRIVILEGED[0]}"
    with pytest.raises(ContainmentError) as refused:
        Cgroups("/nonexistent-home", "cgroup1")
    assert str(refused.value) == "containment cgroup1 is not possible here: " + "; ".join(
        UNPRIVILEGED[1:]
    )
