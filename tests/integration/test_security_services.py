"""The gateway and the dashboard against another local user (`pony-attacker`): credentials
that end, logs that refused requests cannot flood, a 401 that tells nothing about the
home, no login code while the dashboard is down, and dashboard actions that the audit
trail tells apart (README, SECURITY)."""

from __future__ import annotations

import json
import os
import signal
import socket
from pathlib import Path

import pytest

from tests.conftest import OtherUser, Pb, wait_for
from tests.integration.gateway_helpers import (
    EventStream,
    dashboard_session,
    free_port,
    request,
    token_of,
    use_free_ports,
)
from tests.integration.test_security import LISTEN, marker_job, no_runs, one_line

# The other user sends COUNT requests on one keep-alive connection: argv = port count
# method path headers-json [body]; prints the statuses seen and the first body.
FLOOD = r"""
import http.client, json, sys
port, count, method, path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
headers, body = json.loads(sys.argv[5]), (sys.argv[6].encode() if len(sys.argv) > 6 else None)
c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
statuses, first = set(), None
for _ in range(count):
    c.request(method, path, body=body, headers=headers)
    r = c.getresponse()
    text = r.read().decode(errors="replace")
    first = first or text
    statuses.add(r.status)
print(json.dumps({"statuses": sorted(statuses), "first": first}))
"""

# The other user sends COUNT connections' worth of bytes that are not HTTP: argv = port count.
GARBAGE = r"""
import socket, sys
port, count = int(sys.argv[1]), int(sys.argv[2])
for _ in range(count):
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.sendall(b"\x16\x03\x01 not http at all " + b"X" * 4000 + b"\r\n\r\n")
    while s.recv(65536):
        pass
    s.close()
print("sent")
"""


@pytest.fixture
def victim(shared_dir: Path) -> object:
    home = shared_dir / "victim"
    home.mkdir(mode=0o700)
    runner = Pb(home)
    try:
        yield runner
    finally:
        runner.cleanup()


def ends(stream: EventStream) -> bool:
    """Read until the stream ends (True); events may still arrive before it does.  A
    stream that stays open fails on the read timeout (30 s without a byte: the gateway's
    keepalive comes every 15 s)."""
    try:
        while True:
            stream.next_event()
    except EOFError:
        return True
    except TimeoutError:
        return False


# -- 6. rotation ends open streams ---------------------------------------------------------------
def test_rotation_ends_the_streams_opened_with_the_old_credentials(victim: Pb) -> None:
    gateway_port, debug_port = use_free_ports(victim)
    assert victim("service", "start", "gateway").code == 0
    assert victim("service", "start", "debug").code == 0
    admin, read_only = token_of(victim.home), token_of(victim.home, "read")
    session = dashboard_session(victim, debug_port)
    streams = {
        name: EventStream(port, token=token)
        for name, port, token in (
            ("admin", gateway_port, admin),
            ("read", gateway_port, read_only),
            ("dashboard", debug_port, session),
        )
    }
    try:
        streams["admin"].wait_for(lambda e: e["type"] == "gateway.hello")
        streams["read"].wait_for(lambda e: e["type"] == "gateway.hello")
        streams["dashboard"].wait_for(lambda e: e["type"] == "gateway.connected")
        assert victim("gateway", "token", "--rotate").code == 0
        # The admin token's stream and the dashboard's (its session ended) end; the
        # read-only token is still valid, so its stream goes on until it is rotated too.
        assert ends(streams["admin"]) and ends(streams["dashboard"])
        fresh = EventStream(gateway_port, token=token_of(victim.home))
        try:
            fresh.wait_for(lambda e: e["type"] == "gateway.hello")
            assert victim("gateway", "token", "--read-only", "--rotate").code == 0
            assert ends(streams["read"])
            # The new admin token's stream is untouched by the read-only rotation.
            assert victim("scheduler", "start").code == 0
            fresh.wait_for(lambda e: e["type"] == "connect")
        finally:
            fresh.close()
        assert request(debug_port, "GET", "/api/events", token=session)[0] == 401
    finally:
        for stream in streams.values():
            stream.close()


# -- 7. refused requests cannot flood the logs, and learn nothing ----------------------------------
def test_refused_requests_do_not_flood_the_logs(victim: Pb, other_user: OtherUser) -> None:
    gateway_port, debug_port = use_free_ports(victim)
    assert victim("service", "start", "gateway").code == 0
    assert victim("service", "start", "debug").code == 0
    gateway_log, debug_log = victim.home / "gateway.log", victim.home / "debug.log"
    before = gateway_log.stat().st_size, debug_log.stat().st_size
    path = "/api/jobs/" + "A" * 8000
    sent = other_user.python_code(FLOOD, str(gateway_port), "300", "GET", path, "{}", timeout=300)
    answer = json.loads(sent.stdout)
    assert answer["statuses"] == [401], sent.stderr
    # Where the token is would tell the home's path: not for whoever asks.
    assert str(victim.home) not in answer["first"] and "gateway.token" not in answer["first"]
    sent = other_user.python_code(
        FLOOD,
        str(debug_port),
        "300",
        "POST",
        "/api/login",
        json.dumps({"Content-Type": "application/json"}),
        json.dumps({"code": "x" * 43}),
        timeout=300,
    )
    assert json.loads(sent.stdout)["statuses"] == [401], sent.stderr
    sent = other_user.python_code(GARBAGE, str(gateway_port), "200", timeout=300)
    assert sent.stdout.strip() == "sent", sent.stderr
    grown = gateway_log.stat().st_size - before[0], debug_log.stat().st_size - before[1]
    # 300 refusals with 8 KB paths were 2.4 MB of log; a few capped lines are left.
    assert grown[0] < 20_000 and grown[1] < 8_000, grown
    refused = [line for line in gateway_log.read_text().splitlines() if "Refused" in line]
    assert refused and all(len(line) < 400 for line in refused), refused
    assert "(7810 more characters)" in refused[0]


# -- 8. no login code while the dashboard is down ---------------------------------------------
def test_no_login_link_while_the_dashboard_is_down(victim: Pb, other_user: OtherUser) -> None:
    """Another user holds the dashboard's port: `pb debug url` makes no code they could
    read from the page it is opened on and use once the real dashboard starts."""
    _, debug_port = use_free_ports(victim)
    impostor = other_user.popen(LISTEN, str(debug_port))
    try:
        assert impostor.stdout is not None
        assert impostor.stdout.readline().strip() == "listening"
        result = victim("debug", "url")
        assert result.code == 1 and result.out == ""
        assert "the dashboard is not running, so no login link" in one_line(result.err)
        assert str(debug_port) not in result.err  # it names no port it did not run on
        assert not list((victim.home / "debug.logins").glob("*"))
    finally:
        impostor.send_signal(signal.SIGTERM)  # our child, by its PID
        impostor.communicate(timeout=30)
    assert victim("debug", "start").code == 0
    assert victim("debug", "url").out.startswith(f"http://127.0.0.1:{debug_port}/#login=")


# -- 13. dashboard actions in the audit trail --------------------------------------------------
def test_dashboard_actions_say_they_came_through_a_session(victim: Pb, shared_dir: Path) -> None:
    _, debug_port = use_free_ports(victim)
    assert victim("service", "start", "all").code == 0
    marker_job(victim, shared_dir / "ran")
    session = dashboard_session(victim, debug_port)
    status, body, _ = request(debug_port, "POST", "/api/jobs/marker/run", token=session)
    assert status == 202, body
    entries = json.loads(victim("audit", "marker", "--json").out)
    run = next(e for e in entries if e["action"] == "run")
    assert run["via"] == "dashboard" and run["scope"] == "admin link", run
    shown = victim("audit", "marker").out
    assert "dashboard session (admin, login link)" in shown, shown
    assert wait_for((shared_dir / "ran").exists, 30)
    assert (
        "requested by dashboard (session from a login link, admin) as root (uid 0)"
        in (victim.home / "gateway.log").read_text()
    )


def test_unix_socket_refusals_name_the_socket(victim: Pb) -> None:
    """A refused request on the Unix socket (a read-only scope asking for a change) is
    logged, once per request, as from the socket."""
    use_free_ports(victim)
    assert victim("gateway", "start").code == 0
    assert victim("scheduler", "start").code == 0
    marker_job(victim, victim.home / "never")
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(str(victim.home / "gateway.api.sock"))
    sock.sendall(
        b"POST /api/jobs/marker/run HTTP/1.1\r\nHost: localhost\r\n"
        b"X-Pony-Scope: read\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    answer = b""
    while chunk := sock.recv(65536):
        answer += chunk
    sock.close()
    assert answer.startswith(b"HTTP/1.1 403")
    assert no_runs(victim)
    assert "Refused POST /api/jobs/marker/run from" in (victim.home / "gateway.log").read_text()


# -- 2. over TCP, the token goes only to a port the gateway itself holds ---------------------------
def _point_gateway_json_at(home: Path, port: int) -> None:
    """What the dashboard sees when the home's path is too long for gateway.api.sock:
    no Unix socket, only an address (here, one the gateway may not hold)."""
    from pony_scheduler.lifecycle import pidfile

    path = home / "gateway.json"
    meta = json.loads(path.read_text())
    pidfile.write_meta(path, {**meta, "apiSocket": None, "address": f"http://127.0.0.1:{port}"})


def test_no_token_to_a_port_the_gateway_does_not_hold(victim: Pb, other_user: OtherUser) -> None:
    gateway_port, debug_port = use_free_ports(victim)
    assert victim("service", "start", "all").code == 0
    session = dashboard_session(victim, debug_port)
    port = free_port()
    impostor = other_user.popen(LISTEN, str(port))
    try:
        assert impostor.stdout is not None
        assert impostor.stdout.readline().strip() == "listening"
        # gateway.json names the impostor's port while the gateway (a live, verified PID
        # of ours) listens elsewhere, as in the moments before it binds or after it closed.
        _point_gateway_json_at(victim.home, port)
        status, body, _ = request(debug_port, "GET", "/api/jobs", token=session)
        assert status == 503 and "does not listen on" in body["error"], body
        assert one_line(body["error"])
        stream = EventStream(debug_port, token=session)
        try:
            event = stream.wait_for(lambda e: e["type"] == "gateway.unreachable")
            assert "does not listen on" in event["data"]["error"]
        finally:
            stream.close()
        # Its own port, over TCP with the token: the check passes and the data is real.
        _point_gateway_json_at(victim.home, gateway_port)
        status, body, _ = request(debug_port, "GET", "/api/jobs", token=session)
        assert status == 200 and body == {"jobs": []}, body
    finally:
        os.kill(impostor.pid, signal.SIGTERM)  # our child, by its PID
        out, _ = impostor.communicate(timeout=10)
    assert "GOT" not in out, out  # not a byte, let alone the token


def test_no_login_link_for_a_port_the_dashboard_does_not_hold(
    victim: Pb, other_user: OtherUser
) -> None:
    """`pb debug url` makes a one-time code only for an address whose listening socket
    the verified dashboard process holds: whoever holds the port could read the code."""
    from pony_scheduler.lifecycle import pidfile

    use_free_ports(victim)
    assert victim("debug", "start").code == 0
    port = free_port()
    impostor = other_user.popen(LISTEN, str(port))
    try:
        assert impostor.stdout is not None
        assert impostor.stdout.readline().strip() == "listening"
        path = victim.home / "debug.json"
        meta = json.loads(path.read_text())
        pidfile.write_meta(path, {**meta, "address": f"http://127.0.0.1:{port}"})
        refused = victim("debug", "url")
        assert refused.code != 0 and "does not hold its port" in refused.err, refused.all
        assert f"http://127.0.0.1:{port}" in refused.err
        assert "#login=" not in refused.all
        pidfile.write_meta(path, meta)
        assert "#login=" in victim("debug", "url", check=True).out
    finally:
        os.kill(impostor.pid, signal.SIGTERM)  # our child, by its PID
        impostor.communicate(timeout=10)


# -- 4. unauthenticated garbage gets a 4xx, never a 500 or a traceback ----------------------------
def _raw_status(port: int, head: bytes, body: bytes = b"") -> int:
    """Send one request exactly as given (headers no client library would send)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(
            head
            + b"Host: 127.0.0.1:%d\r\nContent-Length: %d\r\n" % (port, len(body))
            + b"Connection: close\r\n\r\n"
            + body
        )
        answer = b""
        while b"\r\n" not in answer:
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
    return int(answer.split(b" ", 2)[1])


def test_malformed_credentials_are_refused_not_crashed_on(victim: Pb) -> None:
    gateway_port, debug_port = use_free_ports(victim)
    assert victim("service", "start", "all").code == 0
    login = b"POST /api/login HTTP/1.1\r\nContent-Type: application/json\r\n"
    # An Origin urlsplit cannot parse is not our origin.
    assert _raw_status(debug_port, login + b"Origin: http://[\r\n", b'{"token": "x"}') == 403
    # A token that is not ASCII (raw header bytes, a lone surrogate in JSON) is just wrong.
    assert (
        _raw_status(gateway_port, b"GET /api/jobs HTTP/1.1\r\nAuthorization: Bearer \xff\xfe\r\n")
        == 401
    )
    assert (
        _raw_status(debug_port, b"GET /api/jobs HTTP/1.1\r\nAuthorization: Bearer \xff\xfe\r\n")
        == 401
    )
    assert _raw_status(debug_port, login, b'{"token": "\\ud800"}') in (400, 401)
    assert _raw_status(debug_port, login, b'{"code": "\\ud800"}') in (400, 401)
    # Both services still answer, and logged refusals, not tracebacks.
    assert request(gateway_port, "GET", "/api/jobs", token=token_of(victim.home))[0] == 200
    assert request(debug_port, "GET", "/api/health")[0] == 401
    for name in ("gateway.log", "debug.log"):
        text = (victim.home / name).read_text()
        assert "Traceback" not in text and "Error handling" not in text, text


LISTEN_V6 = r"""
import socket, sys
srv = socket.socket(socket.AF_INET6)
srv.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
srv.bind(("::1", int(sys.argv[1]))); srv.listen(16)
print("listening", flush=True)
conn, _ = srv.accept()
print("GOT", repr(conn.recv(65536)), flush=True)
"""


@pytest.mark.parametrize("service", ["debug", "gateway"])
def test_localhost_is_both_loopbacks_or_nothing(
    victim: Pb, other_user: OtherUser, service: str
) -> None:
    """/etc/hosts here maps localhost to 127.0.0.1 only, but browsers take it for ::1
    too (RFC 6761): another user holding [::1]:PORT received the login link (review
    finding).  `--host localhost` holds both loopbacks, or refuses to start."""
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this host")
    use_free_ports(victim)
    port = free_port()
    impostor = other_user.popen(LISTEN_V6, str(port))
    try:
        assert impostor.stdout is not None
        if impostor.stdout.readline().strip() != "listening":
            pytest.skip("::1 cannot be bound here")
        refused = victim(service, "start", "--host", "localhost", "--port", str(port))
        assert refused.code != 0, refused.all  # the first line says why (then the log's)
        assert "cannot listen on" in refused.err.splitlines()[0], refused.all
        assert "#login=" not in refused.all
    finally:
        os.kill(impostor.pid, signal.SIGTERM)  # our child, by its PID
        out, _ = impostor.communicate(timeout=10)
    assert "GOT" not in out, out
    free = free_port()
    victim(service, "start", "--host", "localhost", "--port", str(free), check=True)
    for family, address in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        with socket.socket(family) as probe:  # ours on both: a connection is accepted
            probe.connect((address, free))
    victim(service, "stop", check=True)
