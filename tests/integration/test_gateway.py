"""The gateway: its lifecycle, HTTP API, token rules, events from the scheduler, and the
scheduler's event client against a real Unix socket server."""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import stat
import threading
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from pony_scheduler.events import EventClient
from tests.conftest import Pb, alive, wait_for
from tests.integration.gateway_helpers import (
    EventStream,
    free_port,
    occupied_port,
    queued_run_id,
    request,
    run_events,
    start_gateway,
    token_of,
    wait_scheduler_connected,
)

# -- the event client, against a real Unix socket server ----------------------------------------


class LineServer:
    """A minimal stand-in for the gateway's socket: records every line received."""

    def __init__(self, path: Path, *, read: bool = True) -> None:
        self.path = path
        self.read = read
        self.lines: list[dict[str, Any]] = []
        self.connections = 0
        self._stop = False
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(8)
        self.sock.settimeout(0.1)
        self.clients: list[socket.socket] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self._stop:
            try:
                client, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            self.connections += 1
            self.clients.append(client)
            if self.read:
                threading.Thread(target=self._read, args=(client,), daemon=True).start()

    def _read(self, client: socket.socket) -> None:
        buffer = b""
        with contextlib.suppress(OSError):
            while chunk := client.recv(65536):
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    self.lines.append(json.loads(line))

    def types(self) -> list[str]:
        return [line["type"] for line in self.lines]

    def stop(self) -> None:
        self._stop = True
        self.thread.join(2)
        for client in self.clients:
            with contextlib.suppress(OSError):
                client.shutdown(socket.SHUT_RDWR)
            client.close()
        self.sock.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


@pytest.fixture
def sock_path(tmp_path: Path) -> Path:
    return tmp_path / "g.sock"


def test_client_sends_connect_then_events_in_order(sock_path: Path) -> None:
    server = LineServer(sock_path)
    client = EventClient(sock_path)
    try:
        client.start()
        for number in range(3):
            client.emit("run.started", {"run_id": number, "when": datetime(2024, 1, 1)})
        assert wait_for(lambda: len(server.lines) >= 4, 5)
        client.close(timeout=2)
        assert wait_for(lambda: "disconnect" in server.types(), 5)
    finally:
        server.stop()
    assert server.types() == ["connect", "run.started", "run.started", "run.started", "disconnect"]
    assert server.lines[0]["data"]["pid"] == os.getpid()
    assert [line["data"]["run_id"] for line in server.lines[1:4]] == [0, 1, 2]
    assert server.lines[1]["data"]["when"] == "2024-01-01 00:00:00"  # not JSON: as text
    for line in server.lines:
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["timestamp"])


def test_client_reconnects_after_the_server_restarts(sock_path: Path) -> None:
    server = LineServer(sock_path)
    client = EventClient(sock_path)
    client.start()
    try:
        client.emit("heartbeat", {"n": 1})
        assert wait_for(lambda: server.types() == ["connect", "heartbeat"], 5)
        server.stop()  # the gateway goes away
        for number in range(2, 5):
            client.emit("heartbeat", {"n": number})  # buffered meanwhile
        server = LineServer(sock_path)  # and comes back
        assert wait_for(lambda: len(server.lines) >= 4, 10), server.lines
        assert server.types()[0] == "connect"
        assert [line["data"]["n"] for line in server.lines[1:]] == [2, 3, 4]
    finally:
        client.close(timeout=1)
        server.stop()


def test_client_buffer_is_bounded_and_drops_the_oldest(sock_path: Path) -> None:
    client = EventClient(sock_path, max_buffer=5)
    client.start()  # no gateway yet: the first attempt fails, the next is 1 s later
    try:
        for number in range(20):
            client.emit("heartbeat", {"n": number})
        server = LineServer(sock_path)
        try:
            assert wait_for(lambda: len(server.lines) >= 6, 10), server.lines
            connect, *events = server.lines
            assert connect["type"] == "connect" and connect["data"]["dropped"] == 15
            assert [event["data"]["n"] for event in events] == [15, 16, 17, 18, 19]
        finally:
            server.stop()
    finally:
        client.close(timeout=1)


def test_emit_never_blocks_on_a_gateway_that_stops_reading(sock_path: Path) -> None:
    server = LineServer(sock_path, read=False)
    client = EventClient(sock_path, max_buffer=100)
    client.start()
    try:
        payload = {"blob": "x" * 10_000}
        for _ in range(5_000):  # ~50 MB: far more than the socket buffers hold
            client.emit("heartbeat", payload)
        assert len(client._buffer) <= 100
    finally:
        client.close(timeout=0.5)
        server.stop()


def test_an_event_that_is_not_json_is_dropped_and_the_rest_flows(sock_path: Path) -> None:
    server = LineServer(sock_path)
    client = EventClient(sock_path)
    client.start()
    try:
        client.emit("run.started", {("not", "a", "string", "key"): 1})
        client.emit("run.finished", {"run_id": 7})
        assert wait_for(lambda: "run.finished" in server.types(), 5)
        assert server.types() == ["connect", "run.finished"]
    finally:
        client.close(timeout=1)
        server.stop()


def test_close_without_a_gateway_returns_and_emit_after_close_is_ignored(sock_path: Path) -> None:
    client = EventClient(sock_path)
    client.start()
    client.emit("heartbeat", {})
    client.close(timeout=0.3)
    assert client._thread is not None and not client._thread.is_alive()
    client.emit("heartbeat", {})  # no exception, no effect


# -- the gateway daemon -------------------------------------------------------------------------


def test_gateway_lifecycle_files_and_health(pb: Pb, home: Path) -> None:
    port = free_port()
    result = pb("gateway", "start", "--port", str(port))
    assert result.code == 0, result.all
    assert "✓ Gateway started" in result.out
    assert f"Address:   http://127.0.0.1:{port}" in result.out
    assert f"Socket:    {home / 'gateway.sock'}" in result.out
    pid = pb.pid("gateway")
    assert stat.S_IMODE((home / "gateway.sock").stat().st_mode) == 0o600
    assert stat.S_ISSOCK((home / "gateway.sock").stat().st_mode)
    assert stat.S_IMODE((home / "gateway.token").stat().st_mode) == 0o600
    assert stat.S_IMODE((home / "gateway.read-token").stat().st_mode) == 0o600
    assert stat.S_IMODE((home / "gateway.api.sock").stat().st_mode) == 0o600
    token = token_of(home)
    assert len(token) >= 43 and token != token_of(home, "read")

    status, body, headers = request(port, "GET", "/api/health", token=token)
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    assert body["status"] == "ok" and body["pid"] == pid

    shown = pb("gateway", "status")
    assert shown.code == 0 and f"http://127.0.0.1:{port}" in shown.out

    again = pb("gateway", "start", "--port", str(port))
    assert again.code == 1 and "⚠ Gateway is already running" in again.err

    stop = pb("gateway", "stop")
    assert stop.code == 0 and "✓ Gateway stopped" in stop.out
    assert not alive(pid)
    assert not (home / "gateway.sock").exists()
    assert "Gateway stopped (exit status 0)" in (home / "gateway.log").read_text()

    # The token survives restarts: scripts and the dashboard keep working.
    start_gateway(pb, port)
    assert token_of(home) == token


def test_port_in_use_fails_through_the_readiness_pipe(pb: Pb, home: Path) -> None:
    with occupied_port() as port:
        result = pb("gateway", "start", "--port", str(port), "--timeout", "10")
    assert result.code == 1
    first = result.err.splitlines()[0]
    assert first == (
        f"✗ Gateway failed to start: cannot listen on http://127.0.0.1:{port}: "
        f"address already in use (another program listens on port {port}; stop "
        "it or choose another --port)"
    )
    assert not (home / "gateway.pid").exists()
    assert pb("gateway", "status").code == 3


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--port", "70000"], "70000 is not in the range 1<=x<=65535"),
        (["--port", "http"], "'http' is not a valid integer"),
        (["--host", "no-such-host.invalid"], "--host 'no-such-host.invalid': not an address"),
        (["--socket", "/nonexistent/dir/g.sock"], "does not exist"),
        (["--db", "bogus://x"], "unknown database driver"),
    ],
)
def test_bad_gateway_input(pb: Pb, home: Path, args: list[str], expected: str) -> None:
    result = pb("gateway", "start", *args, "--timeout", "10")
    assert result.code in (1, 2), result.all
    assert expected in result.err.splitlines()[0]
    assert not (home / "gateway.pid").exists()


def test_token_rules_on_loopback(pb: Pb, home: Path) -> None:
    port = free_port()
    assert pb("scheduler", "start").code == 0  # creates the database
    assert pb("job", "add", "nightly", "--every", "1h", "--", "true").code == 0
    start_gateway(pb, port)
    token, read_only = token_of(home), token_of(home, "read")

    # Every request needs a token, reads included.
    for path in (
        "/api/jobs",
        "/api/jobs/nightly",
        "/api/runs",
        "/api/status",
        "/api/health",
        "/api/openapi.json",
    ):
        status, body, headers = request(port, "GET", path)
        assert status == 401 and "missing or wrong token" in body["error"], (path, body)
        assert headers["WWW-Authenticate"] == 'Bearer realm="pony-scheduler"'
        assert request(port, "GET", path, token=read_only)[0] == 200, path
        assert request(port, "GET", path, token=token)[0] == 200, path
    status, _, headers = request(port, "GET", "/api/jobs", token="wrong")
    assert status == 401 and 'error="invalid_token"' in headers["WWW-Authenticate"]
    assert (
        request(port, "GET", "/api/jobs", token=token, headers={"Host": f"localhost:{port}"})[0]
        == 200
    )
    # ... from loopback names only: a name that merely resolves here (DNS rebinding).
    status, body, _ = request(
        port, "GET", "/api/jobs", token=token, headers={"Host": "evil.example"}
    )
    assert status == 403 and "loopback names" in body["error"]
    for path in ("/api/jobs/nightly/run", "/api/jobs/nightly/pause"):
        for credentials in (None, "wrong", token + "x"):
            status, body, headers = request(port, "POST", path, token=credentials)
            assert status == 401, body
            assert "missing or wrong token" in body["error"]
            assert headers["WWW-Authenticate"].startswith("Bearer")
        status, body, _ = request(port, "POST", path, headers={"Authorization": f"Basic {token}"})
        assert status == 401
        # The read-only token reads; it never changes anything.
        status, body, headers = request(port, "POST", path, token=read_only)
        assert status == 403 and "may only read" in body["error"], body
        assert 'error="insufficient_scope"' in headers["WWW-Authenticate"]
    # Nothing changed:
    assert json.loads(pb("runs", "--json").out) == []
    assert request(port, "GET", "/api/jobs/nightly", token=read_only)[1]["enabled"] is True

    status, body, _ = request(port, "POST", "/api/jobs/nightly/pause", token=token)
    assert status == 200 and body["enabled"] is False and body["next_run_at"] is None
    status, body, _ = request(port, "POST", "/api/jobs/nightly/resume", token=token)
    assert status == 200 and body["enabled"] is True and body["next_run_at"]
    status, body, _ = request(port, "POST", "/api/jobs/nightly/run", token=token)
    assert status == 202 and body["job"] == "nightly" and isinstance(body["run_id"], int)
    runs = json.loads(pb("runs", "--json").out)
    assert [run["id"] for run in runs] == [body["run_id"]]
    log = (home / "gateway.log").read_text()
    assert f"Run {body['run_id']} of job nightly requested by api (admin token)" in log


def test_non_loopback_address_needs_the_token_for_every_request(pb: Pb, home: Path) -> None:
    port = free_port()
    start_gateway(pb, port, "--host", "0.0.0.0")
    assert "non-loopback" in (home / "gateway.log").read_text()
    for path in ("/api/health", "/api/status", "/api/jobs", "/api/events"):
        status, body, _ = request(port, "GET", path)
        assert status == 401, (path, body)
    status, body, _ = request(port, "GET", "/api/health", token=token_of(home))
    assert status == 200 and body["status"] == "ok"
    # Any Host is answered there (the token protects it, not the name).
    assert (
        request(port, "GET", "/api/health", token=token_of(home), headers={"Host": "pony.example"})[
            0
        ]
        == 200
    )


def test_malformed_requests_get_json_errors_and_the_server_lives(pb: Pb, home: Path) -> None:
    port = free_port()
    start_gateway(pb, port)
    token = token_of(home)
    cases: list[tuple[str, str, bytes | None, int, str]] = [
        ("GET", "/api/runs/abc", None, 400, "a run id must be a whole number from 1"),
        ("GET", "/api/runs/-1", None, 400, "a run id must be a whole number"),
        ("GET", "/api/runs/0", None, 400, "a run id must be a whole number"),
        ("GET", "/api/runs/9223372036854775808", None, 400, "a run id must be a whole number"),
        # Digits int() takes (or fails on) but that are no ASCII number (review finding: 500)
        ("GET", "/api/runs/%C2%B2", None, 400, "a run id must be a whole number"),
        ("GET", "/api/runs/%D9%A3", None, 400, "a run id must be a whole number"),
        ("GET", "/api/runs?limit=%EF%BC%95", None, 400, "limit must be"),
        ("GET", "/api/runs?limit=0", None, 400, "limit must be"),
        ("GET", "/api/runs?limit=ten", None, 400, "limit must be"),
        ("GET", "/api/jobs?limit=0", None, 400, "limit must be"),
        ("GET", "/api/jobs/x?fields=name", None, 400, "unknown query parameter 'fields'"),
        ("GET", "/api/health?x=1", None, 400, "unknown query parameter 'x'"),
        ("POST", "/api/jobs/x/run?wait=1", None, 400, "unknown query parameter 'wait'"),
        ("POST", "/api/jobs/x/pause", b'{"a": 1}', 400, "unknown field 'a'"),
        ("POST", "/api/jobs/x/pause", b"[" * 30000 + b"]" * 30000, 400, "not valid JSON"),
        ("GET", "/api/runs?state=exploded", None, 400, "unknown state"),
        ("GET", "/api/runs?colour=red", None, 400, "unknown query parameter 'colour'"),
        # Which one counts is a guess a proxy in front may make otherwise (review note)
        ("GET", "/api/runs?state=failed&state=succeeded", None, 400, "'state' given more"),
        ("GET", "/api/jobs?limit=1&limit=2", None, 400, "'limit' given more than once"),
        ("GET", "/api/status?x=1", None, 400, "unknown query parameter 'x'"),
        ("GET", "/api/openapi.json?x=1&x=2", None, 400, "unknown query parameter 'x'"),
        ("GET", "/api/events?since=1", None, 400, "unknown query parameter 'since'"),
        ("GET", "/api/nothing", None, 404, "no such endpoint"),
        ("GET", "/", None, 404, "no such endpoint"),
        ("PUT", "/api/jobs", None, 405, "PUT is not allowed"),
        ("DELETE", "/api/runs/1", None, 405, "DELETE is not allowed"),
        ("POST", "/api/jobs/x/run", b"{not json", 400, "not valid JSON"),
        ("POST", "/api/jobs/x/run", b"[1, 2]", 400, "must be a JSON object"),
        ("POST", "/api/jobs/x/run", b"x" * 100_000, 413, "exceeded"),
        ("POST", "/api/jobs/x/explode", None, 404, "no such endpoint"),
    ]
    for method, path, body, expected, words in cases:
        status, answer, headers = request(port, method, path, token=token, body=body)
        assert status == expected, (method, path, answer)
        assert headers["Content-Type"].startswith("application/json"), (path, answer)
        assert answer["status"] == expected and words in answer["error"], (path, answer)
    # No database yet: a clear 503, not a crash.
    status, answer, _ = request(port, "GET", "/api/jobs", token=token)
    assert status == 503 and "not initialised the database yet" in answer["error"]
    # Bytes that are not HTTP at all: aiohttp's own 400, the connection closed.
    for garbage in (
        b"GARBAGE\r\n\r\n",
        b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n",
        b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03",
    ):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            raw.sendall(garbage)
            assert raw.recv(100).startswith(b"HTTP/1.0 400")
    assert request(port, "GET", "/api/health", token=token)[0] == 200
    log = (home / "gateway.log").read_text()
    assert "Traceback" not in log


def gateway_scheduler_and_job(pb: Pb) -> tuple[int, int]:
    """A gateway, a scheduler connected to it and a job `hello`; (port, scheduler pid)."""
    port = free_port()
    start_gateway(pb, port)
    assert pb("scheduler", "start").code == 0
    scheduler = pb.pid("scheduler")
    wait_scheduler_connected(port, scheduler, token_of(pb.home))
    assert pb("job", "add", "hello", "--every", "1h", "--", "echo", "hello").code == 0
    return port, scheduler


def test_events_of_one_run_reach_the_event_stream(pb: Pb, home: Path) -> None:
    port, _ = gateway_scheduler_and_job(pb)
    token = token_of(home, "read")

    stream = EventStream(port, token=token)
    try:
        hello = stream.next_event()
        assert hello["type"] == "gateway.hello"
        run_id = queued_run_id(pb("job", "run", "hello").out)
        events = run_events(stream, run_id)
    finally:
        stream.close()
    assert [event["type"] for event in events] == ["run.started", "run.finished"]
    started, finished = events
    assert started["data"]["job"] == "hello" and started["data"]["pid"] > 0
    assert finished["data"]["state"] == "succeeded" and finished["data"]["exit_code"] == 0
    assert re.fullmatch(r"[0-9a-f]+-\d+", finished["id"])

    status, run, _ = request(port, "GET", f"/api/runs/{run_id}", token=token)
    assert status == 200 and run["state"] == "succeeded" and run["output"] == "hello\n"
    status, body, _ = request(
        port, "GET", "/api/runs?job=hello&state=succeeded&limit=5", token=token
    )
    assert [r["id"] for r in body["runs"]] == [run_id]
    status, body, _ = request(port, "GET", "/api/jobs", token=token)
    assert body["jobs"][0]["name"] == "hello" and body["jobs"][0]["schedule"] == "every 1h"
    # A job unknown to `pb runs` is unknown here too (review finding: 200 and []).
    status, body, _ = request(port, "GET", "/api/runs?job=nope", token=token)
    assert status == 404 and "no job named 'nope'" in body["error"]
    # Pages of jobs, as `pb job list` pages (review finding: all jobs in one answer only).
    for name in ("a", "b"):
        pb("job", "add", name, "--manual", "--", "true", check=True)
    pages = [request(port, "GET", "/api/jobs?limit=2", token=token)[1]]
    pages.append(request(port, "GET", "/api/jobs?limit=2&after=b", token=token)[1])
    assert [[j["name"] for j in p["jobs"]] for p in pages] == [["a", "b"], ["hello"]]
    assert [p["next_after"] for p in pages] == ["b", None]
    status, body, _ = request(port, "GET", "/api/status", token=token)
    assert body["scheduler"]["connected"] is True
    assert body["scheduler"]["lastHeartbeatAgeSeconds"] is not None
    assert [s["service"] for s in body["services"]] == ["gateway", "scheduler", "debug"]
    assert [s["running"] for s in body["services"]] == [True, True, False]


def test_scheduler_keeps_working_while_the_gateway_restarts(pb: Pb, home: Path) -> None:
    port, scheduler = gateway_scheduler_and_job(pb)

    assert pb("gateway", "stop").code == 0
    run_id = queued_run_id(pb("job", "run", "hello").out)

    def finished() -> bool:
        runs = json.loads(pb("runs", "--json").out)
        return any(r["id"] == run_id and r["state"] == "succeeded" for r in runs)

    assert wait_for(finished, 90), pb("runs", "--json").out  # no gateway needed for work
    start_gateway(pb, port)
    wait_scheduler_connected(port, scheduler, token_of(home))
    assert alive(scheduler)

    # What happened while the gateway was down was buffered and arrives now; a client
    # that last saw an earlier gateway gets everything this one holds.
    stream = EventStream(port, token=token_of(home, "read"), last_event_id="0000-0")
    try:
        missed = run_events(stream, run_id)
        assert [e["type"] for e in missed] == ["run.started", "run.finished"]
        # And the live flow works again.
        second = queued_run_id(pb("job", "run", "hello").out)
        assert [e["type"] for e in run_events(stream, second)] == ["run.started", "run.finished"]
    finally:
        stream.close()
    assert "Scheduler connected" in (home / "gateway.log").read_text()


@pytest.mark.postgres
def test_gateway_on_postgresql(pb: Pb, home: Path, pg_url: str) -> None:
    port = free_port()
    start_gateway(pb, port, "--db", pg_url)
    # This machine's server trusts every local connection: the gateway says so at start,
    # before any request, and points to where the SECURITY section is.
    log = (home / "gateway.log").read_text()
    assert "let role 'postgres' in without a password" in log
    assert "(see pb-gateway(1), SECURITY)" in log
    read_only = token_of(home, "read")
    status, body, _ = request(port, "GET", "/api/jobs", token=read_only)
    assert status == 503 and "no pony-scheduler schema yet" in body["error"]
    assert pb("scheduler", "start", "--db", pg_url).code == 0
    assert (
        pb(
            "job",
            "add",
            "pg",
            "--every",
            "1h",
            "--",
            "echo",
            "from pg",
            env={"PONYBUNNY_DB": pg_url},
        ).code
        == 0
    )
    status, body, _ = request(port, "POST", "/api/jobs/pg/run", token=token_of(home))
    assert status == 202
    run_id = body["run_id"]

    def done() -> bool:
        return (
            request(port, "GET", f"/api/runs/{run_id}", token=read_only)[1]["state"] == "succeeded"
        )

    assert wait_for(done, 90)
    assert request(port, "GET", f"/api/runs/{run_id}", token=read_only)[1]["output"] == "from pg\n"
    assert (home / "gateway.log").read_text().count("without a password") == 1  # once
