"""Helpers shared by the gateway, dashboard and `pb service` tests: free ports, plain HTTP
requests, and a reader for server-sent events."""

from __future__ import annotations

import contextlib
import http.client
import json
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.conftest import Pb, wait_for


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def use_free_ports(pb: Pb) -> tuple[int, int]:
    """Give this home's gateway and debug server free ports (through the environment)."""
    gateway, debug = free_port(), free_port()
    pb.env["PONYBUNNY_GATEWAY_PORT"], pb.env["PONYBUNNY_DEBUG_PORT"] = str(gateway), str(debug)
    return gateway, debug


@contextlib.contextmanager
def occupied_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        yield int(sock.getsockname()[1])


def request(
    port: int,
    method: str,
    path: str,
    *,
    token: str | None = None,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    host: str = "127.0.0.1",
) -> tuple[int, Any, dict[str, str]]:
    """One HTTP request; returns (status, parsed JSON or raw text, headers)."""
    connection = http.client.HTTPConnection(host, port, timeout=10)
    all_headers = dict(headers or {})
    if token:
        all_headers["Authorization"] = f"Bearer {token}"
    try:
        connection.request(method, path, body=body, headers=all_headers)
        response = connection.getresponse()
        raw = response.read().decode()
        kind = response.getheader("Content-Type", "")
        payload = json.loads(raw) if kind.startswith("application/json") else raw
        return response.status, payload, dict(response.getheaders())
    finally:
        connection.close()


def token_of(home: Path, kind: str = "admin") -> str:
    name = "gateway.token" if kind == "admin" else "gateway.read-token"
    return (home / name).read_text().strip()


def dashboard_session(pb: Pb, port: int) -> str:
    """Log in to the dashboard as its user would: the one-time link of `pb debug url`."""
    url = pb("debug", "url", check=True).out.strip()
    code = url.split("#login=", 1)[1]
    status, body, _ = request(
        port,
        "POST",
        "/api/login",
        body=json.dumps({"code": code}).encode(),
        headers={"Content-Type": "application/json"},
    )
    assert status == 200 and body["scope"] == "admin", body
    return str(body["session"])


class EventStream:
    """A `GET /api/events` reader: parses server-sent events into JSON objects."""

    def __init__(
        self,
        port: int,
        *,
        token: str | None = None,
        last_event_id: str | None = None,
        path: str = "/api/events",
    ) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.connection.request("GET", path, headers=headers)
        self.response = self.connection.getresponse()
        assert self.response.status == 200
        assert self.response.getheader("Content-Type", "").startswith("text/event-stream")
        self.seen: list[dict[str, Any]] = []

    def next_event(self) -> dict[str, Any]:
        data: list[str] = []
        while True:
            line = self.response.readline()
            if not line:
                raise EOFError("the event stream ended")
            text = line.decode().rstrip("\n")
            if text.startswith("data: "):
                data.append(text[6:])
            elif text == "" and data:
                event: dict[str, Any] = json.loads("\n".join(data))
                self.seen.append(event)
                return event

    def wait_for(self, predicate: Any, timeout: float = 20) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            event = self.next_event()
            if predicate(event):
                return event
        raise AssertionError(f"no matching event within {timeout}s; saw {self.seen}")

    def close(self) -> None:
        self.connection.close()


def run_events(stream: EventStream, run_id: int) -> list[dict[str, Any]]:
    """The run.* events of one run, up to its end."""
    stream.wait_for(
        lambda e: e["type"] in ("run.finished", "run.failed") and e["data"].get("run_id") == run_id
    )
    return [
        e for e in stream.seen if e["type"].startswith("run.") and e["data"].get("run_id") == run_id
    ]


def queued_run_id(output: str) -> int:
    match = re.search(r"Run (\d+) of job", output)
    assert match, output
    return int(match.group(1))


def start_gateway(pb: Pb, port: int, *extra: str) -> int:
    result = pb("gateway", "start", "--port", str(port), *extra)
    assert result.code == 0, result.all
    return pb.pid("gateway")


def wait_scheduler_connected(port: int, pid: int, token: str, timeout: float = 40) -> None:
    def connected() -> bool:
        status, body, _ = request(port, "GET", "/api/status", token=token)
        return status == 200 and any(s["pid"] == pid for s in body["scheduler"]["schedulers"])

    assert wait_for(connected, timeout, interval=0.2), request(
        port, "GET", "/api/status", token=token
    )
