"""`pb service …`: the three services started, reported, restarted and stopped together."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import Pb, alive
from tests.integration.gateway_helpers import (
    dashboard_session,
    occupied_port,
    request,
    token_of,
    use_free_ports,
)

TITLES = {"gateway": "Gateway", "scheduler": "Scheduler", "debug": "Debug Server"}


def pids(pb: Pb) -> dict[str, int]:
    return {name: pb.pid(name) for name in TITLES}


def test_start_all_status_stop_all(pb: Pb, home: Path) -> None:
    gateway_port, debug_port = use_free_ports(pb)
    result = pb("service", "start", "all")
    assert result.code == 0, result.all
    lines = result.out.splitlines()
    running = pids(pb)
    assert lines == [
        f"✓ Gateway started (PID {running['gateway']}, http://127.0.0.1:{gateway_port})",
        f"✓ Scheduler started (PID {running['scheduler']})",
        f"✓ Debug Server started (PID {running['debug']}, http://127.0.0.1:{debug_port})",
    ]
    assert (
        request(gateway_port, "GET", "/api/health", token=token_of(home, "read"))[1]["service"]
        == "gateway"
    )
    assert (
        request(debug_port, "GET", "/api/health", token=dashboard_session(pb, debug_port))[1][
            "service"
        ]
        == "debug"
    )

    status = pb("service", "status")
    assert status.code == 0
    for line, (name, title) in zip(status.out.splitlines(), TITLES.items(), strict=True):
        assert re.fullmatch(
            rf"✓ {title}: Running \(PID {running[name]}, uptime \d+s"
            r"(, http://127\.0\.0\.1:\d+)?\)",
            line,
        ), line
    assert f"http://127.0.0.1:{debug_port})" in status.out
    as_json = json.loads(pb("service", "status", "--json").out)
    assert as_json["allRunning"] is True
    assert [(s["service"], s["status"], s["pid"]) for s in as_json["services"]] == [
        (name, "running", running[name]) for name in TITLES
    ]
    assert as_json["services"][0]["address"] == f"http://127.0.0.1:{gateway_port}"
    # One shape for a service's status, whichever command prints it.
    for entry in as_json["services"]:
        own = json.loads(pb(entry["service"], "status", "--json").out)
        assert set(own) == set(entry)
        assert {k: own[k] for k in ("service", "title", "status", "pid", "address")} == {
            k: entry[k] for k in ("service", "title", "status", "pid", "address")
        }

    again = pb("service", "start")  # `all` is the default; running counts as success
    assert again.code == 0
    assert [line.split(" (")[0] for line in again.out.splitlines()] == [
        "✓ Gateway already running",
        "✓ Scheduler already running",
        "✓ Debug Server already running",
    ]
    assert pids(pb) == running

    stop = pb("service", "stop", "all")
    assert stop.code == 0, stop.all
    assert stop.out.splitlines() == [
        f"✓ Debug Server stopped (PID {running['debug']})",
        f"✓ Scheduler stopped (PID {running['scheduler']})",
        f"✓ Gateway stopped (PID {running['gateway']})",
    ]
    assert not any(alive(pid) for pid in running.values())
    stopped = pb("service", "status")
    assert stopped.code == 3
    assert stopped.out.splitlines() == [
        "✗ Gateway: Not running",
        "✗ Scheduler: Not running",
        "✗ Debug Server: Not running",
    ]
    assert json.loads(pb("service", "status", "--json").out)["allRunning"] is False
    assert "is not running" in pb("service", "stop").out


def test_each_service_started_twice(pb: Pb) -> None:
    use_free_ports(pb)
    for name, title in TITLES.items():
        first = pb("service", "start", name)
        assert first.code == 0 and first.out.startswith(f"✓ {title} started"), first.all
        pid = pb.pid(name)
        second = pb("service", "start", name)
        assert second.code == 0 and second.out.startswith(f"✓ {title} already running")
        direct = pb(name, "start")  # the per-service command keeps its own rule: exit 1
        assert direct.code == 1 and f"⚠ {title} is already running" in direct.err
        assert pb.pid(name) == pid
        assert pb("service", "status", name).code == 0
    assert pb("service", "status").code == 0


def test_status_of_some_services(pb: Pb) -> None:
    use_free_ports(pb)
    assert pb("service", "start", "gateway").code == 0
    assert pb("service", "status", "gateway").code == 0
    partial = pb("service", "status")
    assert partial.code == 3
    assert partial.out.splitlines()[0].startswith("✓ Gateway: Running")
    assert partial.out.splitlines()[1:] == [
        "✗ Scheduler: Not running",
        "✗ Debug Server: Not running",
    ]
    assert pb("service", "status", "debug").code == 3


def test_a_failed_start_names_the_service_and_stops_there(pb: Pb, home: Path) -> None:
    use_free_ports(pb)
    with occupied_port() as port:
        pb.env["PONYBUNNY_GATEWAY_PORT"] = str(port)
        result = pb("service", "start", "all", "--timeout", "10")
    assert result.code == 1
    err = result.err.splitlines()
    assert err[0] == (
        f"✗ Gateway failed to start: cannot listen on http://127.0.0.1:{port}: "
        f"address already in use (another program listens on port {port}; "
        "stop it or choose another --port)"
    )
    assert "- Scheduler not started because Gateway failed" in err
    assert "- Debug Server not started because Gateway failed" in err
    assert result.out == ""
    assert not any((home / f"{name}.pid").exists() for name in TITLES)


def test_a_failing_last_service_leaves_the_others_running(pb: Pb, home: Path) -> None:
    use_free_ports(pb)
    with occupied_port() as port:
        pb.env["PONYBUNNY_DEBUG_PORT"] = str(port)
        result = pb("service", "start", "--timeout", "10")
    assert result.code == 1
    assert result.out.splitlines()[0].startswith("✓ Gateway started")
    assert result.out.splitlines()[1].startswith("✓ Scheduler started")
    assert result.err.startswith(
        f"✗ Debug Server failed to start: cannot listen on "
        f"http://127.0.0.1:{port}: address already in use"
    )
    assert "Last lines of" in result.err
    assert pb("service", "status").code == 3


def test_restart_one_and_all(pb: Pb) -> None:
    use_free_ports(pb)
    assert pb("service", "start").code == 0
    before = pids(pb)
    one = pb("service", "restart", "gateway")
    assert one.code == 0, one.all
    # A restart replaces: the old process hands over (the scheduler's runs keep running)
    # and a new one starts; `pb service restart` does it in start order.
    assert one.out.splitlines()[0].startswith("✓ Gateway started")
    middle = pids(pb)
    assert middle["gateway"] != before["gateway"]
    assert middle["scheduler"] == before["scheduler"] and middle["debug"] == before["debug"]

    everything = pb("service", "restart", "all")
    assert everything.code == 0, everything.all
    assert [line.split(" (")[0] for line in everything.out.splitlines()] == [
        "✓ Gateway started",
        "✓ Scheduler started",
        "✓ Debug Server started",
    ]
    after = pids(pb)
    assert all(after[name] != middle[name] for name in TITLES)
    assert not any(alive(pid) for pid in middle.values())
    assert pb("service", "restart", "debug", "--quiet").out == ""
    assert pb("service", "status").code == 0


def test_logs(pb: Pb, home: Path) -> None:
    use_free_ports(pb)
    assert pb("service", "logs", "gateway").err.startswith("No gateway log yet")
    assert pb("service", "start", "gateway").code == 0
    shown = pb("service", "logs", "gateway", "-n", "3")
    assert shown.code == 0 and len(shown.out.splitlines()) == 3
    assert "Gateway ready" in shown.out
    assert pb("gateway", "logs", "-n", "3").out == shown.out
    everything = pb("service", "logs", "all", "-n", "2")
    assert f"==> {home / 'gateway.log'} <==" in everything.out
    assert "(no scheduler log yet)" in everything.out
    follow_all = pb("service", "logs", "all", "-f")
    assert follow_all.code == 2 and "follow one service at a time" in follow_all.err
    unknown = pb("service", "logs", "web")
    assert unknown.code == 2 and "'web' is not one of" in unknown.err


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["service", "status"],
        ["gateway", "status"],
        ["scheduler", "status"],
        ["scheduler", "status", "--json"],
        ["debug", "status"],
        ["service", "--help"],
    ],
)
def test_cli_does_not_import_sqlalchemy_or_aiohttp(pb: Pb, argv: list[str]) -> None:
    code = (
        "import sys, runpy; sys.argv = ['pb', *sys.argv[1:]]\n"
        "try:\n    runpy.run_module('pony_scheduler', run_name='__main__')\n"
        "except SystemExit:\n    pass\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('sqlalchemy', 'aiohttp', 'alembic', 'croniter', 'zoneinfo', 'tzlocal'))\n"
        "print('HEAVY', heavy)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, *argv], capture_output=True, text=True, env=pb.env, timeout=30
    )
    assert "HEAVY []" in result.stdout, result.stdout + result.stderr


@pytest.mark.parametrize("service", ["gateway", "debug"])
def test_a_restart_onto_a_taken_port_leaves_the_running_one(pb: Pb, service: str) -> None:
    """restart / start --force stopped the working server, then its replacement could not
    listen and nothing served (review finding): refused first, while it still serves."""
    use_free_ports(pb)
    if service == "debug":
        assert pb("gateway", "start").code == 0
    assert pb(service, "start").code == 0
    pid = pb.pid(service)
    with occupied_port() as port:
        for args in (("restart",), ("start", "--force")):
            refused = pb(service, *args, "--port", str(port))
            assert refused.code == 1 and refused.err.count("\n") == 1, refused.all
            assert f"port {port} on 127.0.0.1 is in use by another program" in refused.err
            assert pb.pid(service) == pid and alive(pid)
    assert pb(service, "restart").code == 0 and pb.pid(service) != pid
