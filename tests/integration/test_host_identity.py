"""Host identity on PostgreSQL: a cloned VM is another host, never a dead predecessor.

A VM cloned with its disk keeps /etc/machine-id and the path of its home; only its boot
id differs.  Its scheduler must not take the original's scheduler for an earlier one of
its own that died (which would declare the original's live runs lost at sight and run
them again): a scheduler judges by the process table only the schedulers whose pids it
can see (same machine id, boot and pid namespace), and says in its log that the machine
id is shared.  Simulated hosts: tests/integration/hosts_helpers.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import wait_for
from tests.integration.hosts_helpers import HostPb, need_namespaces, runs_of, text

pytestmark = pytest.mark.postgres


def test_a_cloned_vm_does_not_declare_the_originals_live_runs_dead(
    tmp_path: Path, pg_url: str
) -> None:
    need_namespaces()
    shared = tmp_path / "srv-pony"  # the home's path, the same on both clones
    shared.mkdir(mode=0o700)
    clones: list[HostPb] = []
    for name in ("original", "clone"):
        own = tmp_path / name
        own.mkdir(mode=0o700)
        machine = clones[0].machine_id if clones else None
        clone = HostPb(own, name, machine_id=machine, home_at=shared)
        clone.env.update(PONYBUNNY_DB=pg_url, PONYBUNNY_LEASE="10")
        clones.append(clone)
    original, clone = clones
    started, release = tmp_path / "started", tmp_path / "release"
    try:
        original("scheduler", "start", check=True)
        original(
            "job",
            "add",
            "long",
            "--manual",
            "--retries",
            "2",
            "--shell",
            "--",
            f"echo $PONYBUNNY_RUN_ID >> {started}; while [ ! -e {release} ]; do sleep 0.2; done",
            check=True,
        )
        original("job", "run", "long", check=True)
        assert wait_for(started.exists, 60)
        # `start` reports success after the first upkeep, which is when a scheduler
        # settles the runs of predecessors it finds dead.
        clone("scheduler", "start", check=True)
        assert "shares this host's machine id" in text(clone.home / "scheduler.log")
        release.touch()
        assert wait_for(lambda: [r["state"] for r in runs_of(original)] == ["succeeded"], 90), (
            [(r["id"], r["attempt"], r["state"], r.get("error")) for r in runs_of(original)],
            text(original.home / "scheduler.log"),
            text(clone.home / "scheduler.log"),
        )
        assert started.read_text().split() == [str(runs_of(original)[0]["id"])]
        assert "was lost" not in text(clone.home / "scheduler.log")
    finally:
        for host in clones:
            host.cleanup()
